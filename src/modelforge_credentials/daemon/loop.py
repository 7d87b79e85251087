"""The agent's event loop: uvloop's when it is installed and chosen, asyncio's otherwise.

``MODEL_FORGE_EVENT_LOOP`` (settings.event_loop) chooses: ``auto`` takes
uvloop when it can be imported, ``asyncio`` never does, ``uvloop`` insists.
The server uses only the Protocol/Transport API both loops implement, so the
choice changes speed, not behaviour.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from .. import settings
from ..errors import CredentialStorageUnavailableError

LoopFactory = Callable[[], asyncio.AbstractEventLoop]

#: asyncio's own loop, named rather than taken from the event loop policy,
#: which a library may have switched to uvloop's (uvloop.install()).
ASYNCIO_LOOP: LoopFactory = asyncio.SelectorEventLoop


class EventLoopUnavailableError(CredentialStorageUnavailableError):
    """``MODEL_FORGE_EVENT_LOOP=uvloop`` was set but uvloop cannot be imported.

    Raised before the agent binds its socket. Install it (``pip install
    uvloop``) or choose asyncio's loop (``MODEL_FORGE_EVENT_LOOP=asyncio``,
    or ``auto`` to take uvloop only when it is installed).
    """


def loop_factory(environ: Mapping[str, str] | None = None) -> LoopFactory:
    """The factory of the event loop ``MODEL_FORGE_EVENT_LOOP`` chooses.

    Raises SettingError for an unknown value and
    :class:`EventLoopUnavailableError` for ``uvloop`` without uvloop.
    """
    choice = settings.event_loop(environ)
    if choice == "asyncio":
        return ASYNCIO_LOOP
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]  # optional
    except ImportError as err:
        if choice == "auto":
            return ASYNCIO_LOOP
        raise EventLoopUnavailableError(
            f"{settings.EVENT_LOOP}=uvloop, but uvloop cannot be imported ({err}); "
            f"run `pip install uvloop`, or set {settings.EVENT_LOOP}=asyncio"
        ) from err
    factory: LoopFactory = uvloop.new_event_loop
    return factory


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: which implementation ``loop`` is (for logs and status)."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
