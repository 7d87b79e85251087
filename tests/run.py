#!/usr/bin/env python3
"""Run the whole test suite in the project's own virtual environment.

    python3 tests/run.py [--slow] [pytest arguments...]

Creates ``.venv`` beside the sources on first use (or ``$MODEL_FORGE_VENV``),
installs the package with its test dependencies, then runs pytest and exits
with pytest's status. Needs only Python 3.11+. Tests marked ``slow`` (builds,
clean virtual environments, the real model-forge-llm) run only with
``--slow``, as CI runs them.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ensure_venv() -> Path:
    target = Path(os.environ.get("MODEL_FORGE_VENV", ROOT / ".venv"))
    python = target / "bin" / "python"
    if not python.exists():
        print(f"creating virtual environment in {target}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(target)
    stamp = target / ".installed"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        print("installing model-forge-credentials and its test dependencies", flush=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-e",
                f"{ROOT}[test]",
            ],
            check=True,
        )
        stamp.write_text(digest)
    return python


def main() -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 - run.py may be started by an older python3
        print("model-forge-credentials needs Python 3.11 or newer", file=sys.stderr)
        return 2
    python = ensure_venv()
    args = sys.argv[1:]
    slow = "--slow" in args
    args = [a for a in args if a != "--slow"] or ["-q"]
    if not slow and "-m" not in args:
        args = ["-m", "not slow", *args]
    return subprocess.call([str(python), "-m", "pytest", *args], cwd=ROOT, env=test_env(python))


def test_env(python: Path) -> dict[str, str]:
    """The suite's environment: bytecode cached in the venv. The tests start
    hundreds of Python processes; with PYTHONDONTWRITEBYTECODE set (as some
    machines do) each one would compile every module it imports again."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("PYTHONPYCACHEPREFIX", str(python.parent.parent / "pycache"))
    return env


if __name__ == "__main__":
    sys.exit(main())
