"""Pieces the reference, exec, git credential and migration tests share.

A real agent holding a given set of credentials, a storage wrapper for
injecting faults, a child process with its three standard streams piped that
never outlives the test, the check that an error says where a bad line is
without quoting it, and what a fresh interpreter loads for an import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from agent_harness import AgentWorkspace
from modelforge_credentials.client.sync import AgentClient
from modelforge_credentials.storage import CredentialStorage

TIMEOUT = 30.0


@contextmanager
def agent_holding(
    env: dict[str, str], stored: Mapping[tuple[str, str], str]
) -> Iterator[AgentWorkspace]:
    """A real agent (no idle timeout) for ``env`` that holds ``stored``; closed at the end."""
    ws = AgentWorkspace(env)
    try:
        ws.serve("--idle-timeout", "0")
        with AgentClient(ws.socket, timeout=TIMEOUT) as client:
            for (provider, key), value in stored.items():
                client.store(provider, key, value)
        yield ws
    finally:
        ws.close()


class PassThroughStorage:
    """A CredentialStorage passing every call to ``inner``: a fault injector
    overrides only the calls it makes fail."""

    def __init__(self, inner: CredentialStorage) -> None:
        self.inner = inner

    def store(self, provider: str, key: str, value: str) -> None:
        self.inner.store(provider, key, value)

    def retrieve(self, provider: str, key: str) -> str | None:
        return self.inner.retrieve(provider, key)

    def delete(self, provider: str, key: str) -> bool:
        return self.inner.delete(provider, key)

    def exists(self, provider: str, key: str) -> bool:
        return self.inner.exists(provider, key)

    def list_keys(self, provider: str | None = None) -> list[tuple[str, str]]:
        return self.inner.list_keys(provider)

    @property
    def name(self) -> str:
        return self.inner.name

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


@contextmanager
def piped(argv: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` running with stdin, stdout and stderr piped; killed and reaped when
    the block leaves it running (a failed assertion, a timeout)."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=TIMEOUT)


def assert_locates_without_quoting(
    error: BaseException, where: str, problem: str, *secrets: str
) -> None:
    """``error`` starts with ``where`` (a file and line), names ``problem``, and
    holds none of ``secrets``: the line it is about may hold one."""
    message = str(error)
    assert message.startswith(where), message
    assert problem in message, message
    for secret in secrets:
        assert secret not in message


def modules_loaded_by(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``statement``."""
    code = f"import sys\n{statement}\nprint(repr(sorted(sys.modules)))\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return set(ast.literal_eval(result.stdout))
