#!/usr/bin/env python3
"""The main job, end to end, in a throw-away directory:

    python3 tests/demo.py

Sets up the project's virtual environment (as tests/run.py does), starts the
credential agent on an encrypted file in a temp directory, stores and reads
back a credential through the CLI, shows `status`, and stops the agent.
Touches neither your home directory nor your keyring.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ensure_venv  # noqa: E402


def main() -> int:
    python = ensure_venv()
    agent = str(python.parent / "modelforge-agent")
    with tempfile.TemporaryDirectory(prefix="mf-demo-", dir="/tmp") as scratch:
        root = Path(scratch)
        runtime = root / "run"
        runtime.mkdir(mode=0o700)
        env = dict(
            os.environ,
            XDG_RUNTIME_DIR=str(runtime),
            MODEL_FORGE_CONFIG_DIR=str(root / "config"),
            MODEL_FORGE_BACKEND="encrypted-file",
        )
        env.pop("MODEL_FORGE_AGENT_SOCK", None)

        def run(*args: str, stdin: str | None = None) -> str:
            shown = "modelforge-agent " + " ".join(shlex.quote(a) for a in args)
            print(f"$ {'echo ... | ' if stdin else ''}{shown}", flush=True)
            result = subprocess.run(
                [agent, *args], input=stdin, env=env, capture_output=True, text=True
            )
            sys.stdout.write(result.stdout)
            sys.stdout.write(result.stderr)
            if result.returncode != 0:
                raise SystemExit(f"demo failed: exit status {result.returncode}")
            return result.stdout

        try:
            for line in run("start").splitlines():
                if line.startswith("MODEL_FORGE_AGENT_SOCK="):
                    env["MODEL_FORGE_AGENT_SOCK"] = line.split(";")[0].split("=", 1)[1]
            run("set", "openai", "api_key", stdin="sk-demo-not-a-real-key\n")
            value = run("get", "openai", "api_key").strip()
            run("list")
            run("status")
            ok = value == "sk-demo-not-a-real-key"
            print("read back the stored value: " + ("yes" if ok else "NO"))
        finally:
            subprocess.run([agent, "stop"], env=env, capture_output=True)
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
