"""The one thread that runs backend calls.

Backend calls are serialized (one worker), and the event loop never blocks on
D-Bus, disk or the key derivation. A call that does not answer in time is
abandoned with its thread, so later requests are not queued behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..errors import CredentialStorageUnavailableError

log = logging.getLogger("modelforge_credentials.agent")

T = TypeVar("T")


class BackendWorker:
    """Runs ``fn(*args)`` on the worker thread, one call at a time."""

    def __init__(self, backend_name: str, timeout: Callable[[], float | None]) -> None:
        self.backend_name = backend_name
        self._timeout = timeout
        self.executor = self._new_executor()
        self.in_flight = 0

    @staticmethod
    def _new_executor() -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="backend")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        self.in_flight += 1
        try:
            return await self._run(fn, *args)
        finally:
            self.in_flight -= 1

    def after_current(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` once the calls already queued are done (the worker runs
        its jobs in order); nothing when the worker is shut down."""
        with contextlib.suppress(RuntimeError):
            self.executor.submit(fn)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        future = asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        timeout = self._timeout()
        if not timeout:
            return await future
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            # The worker is stuck (a keyring waiting on a prompt, a hung
            # mount): abandon it so later requests are not queued behind it.
            log.error("the backend did not answer within %.0f s; abandoning its thread", timeout)
            self.close()
            self.executor = self._new_executor()
            raise CredentialStorageUnavailableError(
                f"the {self.backend_name} backend did not answer within {timeout:.0f} s "
                "(a keyring may be waiting on an unlock prompt); unlock it and retry, "
                "or check the agent's log"
            ) from None
