"""The keyring plugin's errors and resources (security review, item 18).

A name in the agent that the plugin's percent-encoding cannot have written
(``user:%zz``, put there with ``modelforge-agent set`` or by another program)
is a keyring error that names it, not a bare ValueError or a wrong username.
A backend that keyring drops (``set_keyring`` to another one, a thread that
ends, the program's own ``del``) closes its connection: no ResourceWarning.
"""

from __future__ import annotations

import gc
import os
import threading
import warnings
from collections.abc import Iterator

import keyring
import keyring.errors
import pytest

from agent_harness import SOCK_VAR, TIMEOUT, AgentWorkspace
from modelforge_credentials.client.sync import AgentClient
from modelforge_credentials.keyring_backend import AgentKeyring, from_key, to_pair


@pytest.fixture
def workspace(monkeypatch: pytest.MonkeyPatch) -> Iterator[AgentWorkspace]:
    ws = AgentWorkspace(dict(os.environ))
    ws.serve("--idle-timeout", "0")
    monkeypatch.setenv(SOCK_VAR, str(ws.socket))
    yield ws
    ws.close()


def store_raw(ws: AgentWorkspace, provider: str, key: str, value: str) -> None:
    with AgentClient(ws.socket, timeout=TIMEOUT) as client:
        client.store(provider, key, value)


@pytest.mark.parametrize(
    "key",
    ["user:%zz", "user:%", "user:alice%4", "user:%+1", "user:% 1", "user:%G0"],
)
def test_a_stored_name_with_a_bad_escape_is_a_keyring_error(
    workspace: AgentWorkspace, key: str
) -> None:
    store_raw(workspace, "keyring:svc", key, "pw-not-in-any-message")
    backend = AgentKeyring()
    keyring.set_keyring(backend)  # conftest puts the previous backend back
    try:
        with pytest.raises(keyring.errors.KeyringError) as caught:
            keyring.get_credential("svc", None)
    finally:
        backend.close()
    message = str(caught.value)
    assert repr(key) in message and "'keyring:svc'" in message, message
    assert "%XX" in message and "modelforge-agent delete" in message, message
    assert "pw-not-in-any-message" not in message


def test_every_name_the_plugin_writes_reads_back() -> None:
    every_escaped = "".join(chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))) + "%"
    for username in ("", "%", "%41%25", every_escaped, "plain"):
        assert from_key(to_pair("svc", username)[1]) == username


def resource_warnings(action: object) -> list[str]:
    """The ResourceWarnings raised while ``action()`` runs and its garbage is collected."""
    gc.collect()  # earlier tests' garbage is not this action's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert callable(action)
        action()
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


@pytest.mark.usefixtures("workspace")
def test_a_dropped_backend_closes_its_socket() -> None:
    def use_and_drop() -> None:
        backend = AgentKeyring()
        backend.set_password("svc", "alice", "pw")
        assert backend.get_password("svc", "alice") == "pw"

    assert resource_warnings(use_and_drop) == []


@pytest.mark.usefixtures("workspace")
def test_keyring_replacing_the_backend_closes_its_socket() -> None:
    def replace() -> None:
        keyring.set_keyring(AgentKeyring())
        keyring.set_password("svc", "bob", "pw")
        assert keyring.get_password("svc", "bob") == "pw"
        keyring.set_keyring(AgentKeyring())  # the first one is now garbage
        assert keyring.get_password("svc", "bob") == "pw"
        keyring.core.get_keyring().close()  # type: ignore[attr-defined]

    assert resource_warnings(replace) == []


@pytest.mark.usefixtures("workspace")
def test_a_thread_that_ends_leaves_no_socket_open() -> None:
    backend = AgentKeyring()

    def in_a_thread() -> None:
        worker = threading.Thread(target=backend.get_password, args=("svc", "carol"))
        worker.start()
        worker.join(TIMEOUT)
        assert not worker.is_alive()

    try:
        assert resource_warnings(in_a_thread) == []
    finally:
        backend.close()


@pytest.mark.usefixtures("workspace")
def test_a_closed_backend_can_be_used_again() -> None:
    backend = AgentKeyring()
    backend.set_password("svc", "dave", "pw")
    backend.close()
    assert backend.get_password("svc", "dave") == "pw"  # reconnects
    backend.close()
    backend.close()  # idempotent
