"""Commands over secret references (``mf://PROVIDER/KEY``): read, inject."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def add_commands(add: Callable[[str, str], Any]) -> None:
    """Register this module's subcommands (see cli_args.EXTENSIONS)."""
