"""Where the agent's socket lives. Light on purpose: the thin client imports it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

SOCKET_VARIABLE = "MODEL_FORGE_AGENT_SOCK"
SOCKET_NAME = "agent.sock"
APP_DIR = "model-forge"


def runtime_dir() -> Path:
    """The user's runtime directory: ``$XDG_RUNTIME_DIR`` on Linux."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and sys.platform != "darwin":
        return Path(xdg)
    import warnings

    import platformdirs

    with warnings.catch_warnings():
        # Without XDG_RUNTIME_DIR platformdirs warns and falls back; the agent
        # checks whatever directory results before using it.
        warnings.simplefilter("ignore")
        return Path(platformdirs.user_runtime_dir(appauthor=False))


def socket_path() -> Path:
    """``$MODEL_FORGE_AGENT_SOCK``, else ``<runtime dir>/model-forge/agent.sock``."""
    override = os.environ.get(SOCKET_VARIABLE)
    if override:
        return Path(override)
    return runtime_dir() / APP_DIR / SOCKET_NAME
