"""The real model-forge-llm 2.3.0 from PyPI, unmodified, through the agent.

In one virtual environment with model-forge-llm, this package installed as a
wheel and, in a second one, editable: ``migrate``, then ``integrate
model-forge``, then model-forge's own CLI (``auth status``, ``auth login``,
a device-flow token refresh against a loopback token endpoint, ``config
show``), then ``integrate --remove``. No process of ours (CLI, the agent it
auto-starts, the keyring plugin) may import model-forge or langchain: each
process's ``sys.modules`` is recorded at exit. Opt-in, see model_forge_venv.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from model_forge_venv import (
    MODULES_OUT,
    VenvError,
    base_dir,
    model_forge_venv,
    require_real_model_forge,
    site_packages,
    sitecustomize_dir,
)
from modelforge_example import copilot_auth, realistic_config

pytestmark = pytest.mark.slow

TIMEOUT = 180.0
OLD_KEY = "sk-" + "o" * 48
NEW_KEY = "sk-" + "N" * 48
OLD_ACCESS = "ghu_realOldAccessToken0001"
OLD_REFRESH = "ghr_realOldRefreshToken0001"
NEW_ACCESS = "ghu_realNewAccessToken0002"
NEW_REFRESH = "ghr_realNewRefreshToken0002"
SECRETS = (OLD_KEY, NEW_KEY, OLD_ACCESS, OLD_REFRESH, NEW_ACCESS, NEW_REFRESH)


class TokenEndpoint(http.server.BaseHTTPRequestHandler):
    """``auth_details.token_url``: answers a refresh_token grant as GitHub does."""

    requests: list[dict[str, list[str]]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers.get("Content-Length", "0"))
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        type(self).requests.append(form)
        body = json.dumps(
            {
                "access_token": NEW_ACCESS,
                "token_type": "bearer",
                "scope": "read:user",
                "expires_in": 28800,
                "refresh_token": NEW_REFRESH,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def token_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TokenEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/login/oauth/access_token"
    server.shutdown()


@pytest.fixture(scope="module", params=["wheel", "editable"])
def venv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_real_model_forge()
    try:
        return model_forge_venv(base_dir(tmp_path_factory), request.param)
    except VenvError as err:
        pytest.fail(str(err))


class Session:
    """One user's shell: HOME, an agent socket and store of its own, the venv on PATH."""

    def __init__(self, venv: Path, home: Path, base: Path) -> None:
        self.venv = venv
        self.home = home
        self.work = Path(tempfile.mkdtemp(prefix="mfreal-", dir="/tmp"))
        self.modules = self.work / "modules.jsonl"
        self.env = {
            **os.environ,
            "HOME": str(home),
            "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
            "MODEL_FORGE_AGENT_SOCK": str(self.work / "s" / "agent.sock"),
            "MODEL_FORGE_CONFIG_DIR": str(self.work / "store"),
            "MODEL_FORGE_BACKEND": "encrypted-file",
            "PYTHONPATH": str(sitecustomize_dir(base)),
            MODULES_OUT: str(self.modules),
        }
        self.config = home / ".config" / "model-forge" / "config.json"
        self.outputs: list[str] = []

    def run(
        self,
        *argv: str,
        check: bool = True,
        reveals: bool = False,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv``; unless it ``reveals`` a value on purpose (``get``), its
        output joins what is checked for secrets at the end."""
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            env=self.env if env is None else env,
            cwd=self.home,
            timeout=TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        self.outputs += [done.stderr] if reveals else [done.stdout, done.stderr]
        if check:
            assert done.returncode == 0, f"{argv}: {done.stdout}\n{done.stderr}"
        return done

    def ours(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        reveals = args[0] in ("get", "exec")
        return self.run(
            str(self.venv / "bin" / "modelforge-agent"), *args, check=check, reveals=reveals
        )

    def model_forge(self, *args: str) -> str:
        done = self.run(str(self.venv / "bin" / "modelforge"), *args)
        return done.stdout + done.stderr

    def python(self, code: str) -> str:
        return self.run(str(self.venv / "bin" / "python"), "-c", code, reveals=True).stdout

    def records(self) -> list[dict[str, Any]]:
        lines = self.modules.read_text().splitlines() if self.modules.exists() else []
        return [json.loads(line) for line in lines]


def write_config(session: Session, token_url: str) -> None:
    """The example config, its token expired and its token endpoint ours."""
    token = {**copilot_auth(OLD_ACCESS, OLD_REFRESH)}
    token["expires_at"] = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    config = realistic_config(OLD_KEY, token)
    details = config["providers"]["github_copilot"]["auth_details"]
    details["token_url"] = token_url
    details["device_code_url"] = token_url.replace("access_token", "device/code")
    session.config.parent.mkdir(parents=True, exist_ok=True)
    session.config.write_text(json.dumps(config, indent=4))


def foreign(modules: list[str]) -> list[str]:
    return [
        m
        for m in modules
        if m == "modelforge" or m.startswith(("modelforge.", "langchain", "langchain_"))
    ]


def test_model_forge_reads_and_writes_every_secret_through_the_agent(
    venv: Path, token_url: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    session = Session(venv, tmp_path / "home", base_dir(tmp_path_factory))
    write_config(session, token_url)
    TokenEndpoint.requests.clear()
    try:
        _walk_through(session)
    finally:
        session.ours("stop", check=False)
    records = session.records()
    ours = [
        r
        for r in records
        if "modelforge_credentials" in " ".join(r["argv"])
        or any(a.endswith("modelforge-agent") for a in r["argv"][:1])
        or "keyring-probe" in r["argv"]
    ]
    kinds = {
        "serve": [r for r in ours if "serve" in r["argv"]],
        "cli": [r for r in ours if r["argv"][0].endswith("modelforge-agent")],
        "keyring": [r for r in ours if "keyring-probe" in r["argv"]],
    }
    for kind, found in kinds.items():
        assert found, f"no {kind} process recorded its modules: {[r['argv'] for r in records]}"
    for record in ours:
        assert foreign(record["modules"]) == [], record["argv"]
    # The recorder sees what a process imports: model-forge's own processes have it.
    theirs = [r for r in records if r["argv"][0].endswith("/modelforge")]
    assert theirs and all("modelforge.auth" in r["modules"] for r in theirs)
    for text in session.outputs:
        for secret in SECRETS:
            if secret in text:
                pytest.fail(f"a secret value was printed: {text[:200]!r}")


def _walk_through(session: Session) -> None:
    site = site_packages(session.venv)
    session.ours("migrate")  # auto-starts the agent from this venv
    assert "auth_data" not in session.config.read_text()
    before = sorted(p.name for p in site.iterdir())

    printed = session.ours("integrate", "model-forge", "--print").stdout
    assert "would write" in printed
    assert sorted(p.name for p in site.iterdir()) == before
    session.ours("integrate", "model-forge")

    # Every key, found without exec; the expired token is refreshed and saved.
    status = session.model_forge("auth", "status")
    assert status.count("Valid credentials found") == 2, status
    assert [r["refresh_token"] for r in TokenEndpoint.requests] == [[OLD_REFRESH]]
    assert session.ours("get", "github_copilot", "access_token").stdout == NEW_ACCESS + "\n"
    assert session.ours("get", "github_copilot", "refresh_token").stdout == NEW_REFRESH + "\n"
    typed = session.python(
        "from modelforge import auth; d = auth.get_auth_data('github_copilot'); "
        "print(type(d['expires_in']).__name__, d['expires_in'])"
    )
    assert typed == "int 28800\n"

    session.model_forge("auth", "login", "--provider", "openai", "--api-key", NEW_KEY, "--force")
    assert session.ours("get", "openai", "api_key").stdout == NEW_KEY + "\n"
    config_text = session.config.read_text()
    assert "auth_data" not in config_text
    shown = session.model_forge("config", "show")
    assert "openai" in shown and "auth_data" not in shown

    # exec injects the newest key, named as model-forge names it.
    env_value = session.ours(
        "exec",
        "-p",
        "openai",
        "--",
        "python",
        "-c",
        "import os; print(os.environ['MODELFORGE_OPENAI_API_KEY'] == " + repr(NEW_KEY) + ")",
    ).stdout
    assert env_value == "True\n"
    names = ["openai", "github-copilot", "my.local", "a_b-c.d"]
    theirs = session.python(
        "from modelforge.auth import _normalize_provider_name_for_env as n; "
        f"print([n(p) for p in {names!r}])"
    )
    mine = session.python(
        "from modelforge_credentials.secret_env import modelforge_env_part as n; "
        f"print([n(p) for p in {names!r}])"
    )
    assert theirs == mine

    # keyring loads every plugin's entry point (ours among them) to choose a backend.
    loaded = session.run(
        str(session.venv / "bin" / "python"),
        "-c",
        "import sys, keyring, keyring.backend; keyring.backend.get_all_keyring(); "
        "keyring.get_keyring(); print('modelforge_credentials.keyring_backend' in sys.modules)",
        "keyring-probe",
        env={k: v for k, v in session.env.items() if k != "PYTHON_KEYRING_BACKEND"},
    ).stdout
    assert loaded == "True\n"

    session.ours("integrate", "model-forge", "--remove")
    assert sorted(p.name for p in site.iterdir()) == before
    after = session.model_forge("auth", "status", "--provider", "openai")
    assert "No valid credentials found" in after  # model-forge reads its config again
    session.model_forge("auth", "login", "--provider", "openai", "--api-key", NEW_KEY)
    assert NEW_KEY in session.config.read_text()  # ...and writes it, as it always did
