"""What every suite shares: iteration counts, the scratch root, the running peers."""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from peers import (
    AgentPeer,
    FloorPeer,
    PeerUnavailable,
    SecretServicePeer,
    SshAgentPeer,
)

PROVIDER, KEY = "openai", "api_key"
SECRET = "sk-bench-" + "x" * 40


def make_credentials(n: int) -> dict[str, dict[str, str]]:
    """``n`` credentials over up to 100 providers, ``PROVIDER/KEY`` among them."""
    providers = max(1, min(100, n // 10))
    items: dict[str, dict[str, str]] = {PROVIDER: {KEY: SECRET}}
    for i in range(n - 1):
        keys = items.setdefault(f"provider{i % providers:03d}", {})
        keys[f"key{i:07d}"] = "sk-" + secrets.token_hex(20)
    return items


@dataclass(frozen=True)
class Settings:
    quick: bool
    latency_rounds: int
    latency_per_round: int
    load_workers: int
    load_warmup_s: float
    load_window_s: float
    load_passes: int
    cli_runs: int
    today_rounds: int
    growth_ns: tuple[int, ...]
    growth_rounds: int
    growth_retrieves: int
    growth_store_calls: dict[int, int]
    unlock_rounds: int
    kdf_runs: int
    start_runs: int

    @classmethod
    def choose(cls, quick: bool) -> Settings:
        if quick:
            return cls(
                quick=True,
                latency_rounds=6,
                latency_per_round=1000,
                load_workers=16,
                load_warmup_s=0.3,
                load_window_s=1.0,
                load_passes=1,
                cli_runs=12,
                today_rounds=4,
                growth_ns=(10, 1_000, 10_000),
                growth_rounds=3,
                growth_retrieves=500,
                growth_store_calls={10: 10, 1_000: 10, 10_000: 4},
                unlock_rounds=2,
                kdf_runs=2,
                start_runs=5,
            )
        return cls(
            quick=False,
            latency_rounds=20,
            latency_per_round=2000,
            load_workers=16,
            load_warmup_s=0.5,
            load_window_s=3.0,
            load_passes=2,
            cli_runs=60,
            today_rounds=10,
            growth_ns=(10, 1_000, 10_000, 100_000),
            growth_rounds=5,
            growth_retrieves=1000,
            growth_store_calls={10: 20, 1_000: 20, 10_000: 10, 100_000: 3},
            unlock_rounds=5,
            kdf_runs=5,
            start_runs=20,
        )


@dataclass
class Context:
    root: Path
    settings: Settings
    stack: contextlib.ExitStack
    _peers: dict[str, object] = field(default_factory=dict)
    _failures: dict[str, str] = field(default_factory=dict)

    def _start(self, name: str, make):  # type: ignore[no-untyped-def]
        if name in self._failures:
            raise PeerUnavailable(self._failures[name])
        if name not in self._peers:
            try:
                peer = make()
            except PeerUnavailable as err:
                self._failures[name] = str(err)
                raise
            except (OSError, RuntimeError, TimeoutError) as err:
                self._failures[name] = f"{type(err).__name__}: {err}"
                raise PeerUnavailable(self._failures[name]) from err
            self._peers[name] = peer
        return self._peers[name]

    def agent(self) -> AgentPeer:
        """The main agent: encrypted file (key-file protection), 10 credentials."""

        def make() -> AgentPeer:
            from modelforge_credentials import EncryptedFileStorage

            peer = AgentPeer(self.root / "agent")
            EncryptedFileStorage(peer.config_dir).store_many(make_credentials(10))
            peer.start()
            self.stack.callback(peer.stop)
            return peer

        peer: AgentPeer = self._start("agent", make)
        return peer

    def floor(self) -> FloorPeer:
        def make() -> FloorPeer:
            peer = FloorPeer(self.root / "floor", make_credentials(10))
            peer.start()
            self.stack.callback(peer.stop)
            return peer

        peer: FloorPeer = self._start("floor", make)
        return peer

    def ssh_agent(self) -> SshAgentPeer:
        def make() -> SshAgentPeer:
            peer = SshAgentPeer(self.root / "ssh")
            peer.start()
            self.stack.callback(peer.stop)
            return peer

        peer: SshAgentPeer = self._start("ssh-agent", make)
        return peer

    def secret_service(self) -> SecretServicePeer:
        def make() -> SecretServicePeer:
            why = SecretServicePeer.missing()
            if why:
                raise PeerUnavailable(why)
            peer = SecretServicePeer(self.root / "secret-service")
            self.stack.callback(peer.stop)
            peer.start()
            return peer

        peer: SecretServicePeer = self._start("secret-service", make)
        return peer

    def keyring_agent(self) -> AgentPeer:
        """An agent on the Secret Service backend (values cached 10 s)."""

        def make() -> AgentPeer:
            service = self.secret_service()
            peer = AgentPeer(
                self.root / "agent-keyring",
                MODEL_FORGE_BACKEND="keyring",
                PYTHON_KEYRING_BACKEND="keyring.backends.SecretService.Keyring",
                DBUS_SESSION_BUS_ADDRESS=service.env["DBUS_SESSION_BUS_ADDRESS"],
            )
            peer.start()
            self.stack.callback(peer.stop)
            return peer

        peer: AgentPeer = self._start("agent-keyring", make)
        return peer

    def why_unavailable(self, name: str) -> str:
        return self._failures.get(name, "unavailable")
