"""Where the agent's socket lives. Light on purpose: the thin client imports
it, so it uses plain ``os.path`` strings (pathlib costs the client ~10 ms)."""

from __future__ import annotations

import os
import sys

from . import settings

SOCKET_VARIABLE = settings.SOCKET
SOCKET_NAME = "agent.sock"
APP_DIR = "model-forge"


def runtime_dir() -> str:
    """The user's runtime directory: ``$XDG_RUNTIME_DIR`` on Linux."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and sys.platform != "darwin":
        return xdg
    import warnings

    import platformdirs

    with warnings.catch_warnings():
        # Without XDG_RUNTIME_DIR platformdirs warns and falls back; the agent
        # checks whatever directory results before using it.
        warnings.simplefilter("ignore")
        return str(platformdirs.user_runtime_dir(appauthor=False))


def socket_path() -> str:
    """``$MODEL_FORGE_AGENT_SOCK``, else ``<runtime dir>/model-forge/agent.sock``."""
    override = settings.text(settings.SOCKET)
    if override:
        return override
    return os.path.join(runtime_dir(), APP_DIR, SOCKET_NAME)
