"""Virtual environments with the real model-forge-llm from PyPI beside this package.

Opt-in (``MODEL_FORGE_TEST_REAL_MODELFORGE=1``; CI sets it): model-forge-llm
pulls in langchain, about 360 MB and a minute per environment. Both
environments share one pip cache, so the second install downloads nothing.
``MODEL_FORGE_REAL_MODELFORGE_VENV`` may name a directory to keep them in
between runs.

A ``sitecustomize`` on ``PYTHONPATH`` lets a test see, at exit, which modules
each Python process of a run had imported (``MODULES_OUT``): the real
``sys.modules``, of every process, the agent started in the background too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REAL_VARIABLE = "MODEL_FORGE_TEST_REAL_MODELFORGE"
REAL_VENV_VARIABLE = "MODEL_FORGE_REAL_MODELFORGE_VENV"
MODEL_FORGE = "model-forge-llm==2.3.0"
ROOT = Path(__file__).resolve().parent.parent
MODULES_OUT = "MODEL_FORGE_TEST_MODULES_OUT"

#: Read at import: the autouse isolation fixture removes every MODEL_FORGE_* variable
#: before a test runs.
_ENABLED = os.environ.get(REAL_VARIABLE) == "1"
_KEEP_IN = os.environ.get(REAL_VENV_VARIABLE) or None

SITECUSTOMIZE = f"""
import atexit, json, os, sys

def _record(out=os.environ.get({MODULES_OUT!r})):
    if not out:
        return
    record = {{"pid": os.getpid(), "argv": sys.argv, "modules": sorted(sys.modules)}}
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\\n")

atexit.register(_record)
"""


def require_real_model_forge() -> None:
    if not _ENABLED:
        pytest.skip(f"set {REAL_VARIABLE}=1 to install {MODEL_FORGE} from PyPI (~360 MB)")


def _run(*argv: str | Path, env: dict[str, str] | None = None) -> None:
    try:
        subprocess.run(
            [str(a) for a in argv], check=True, capture_output=True, timeout=900, env=env
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
        detail = getattr(err, "stderr", b"") or b""
        pytest.fail(f"{' '.join(map(str, argv[:4]))} failed: {err} {detail[-800:]!r}")


def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = Path(_KEEP_IN) if _KEEP_IN else tmp_path_factory.getbasetemp() / "model-forge-llm"
    base.mkdir(parents=True, exist_ok=True)
    return base


def model_forge_venv(base: Path, how: str) -> Path:
    """A venv with model-forge-llm 2.3.0 and this package installed ``how``:
    ``"wheel"`` (built from this checkout), ``"editable"`` or ``"alone"``."""
    venv = base / f"venv-{how}"
    stamp = venv / ".ready"
    if stamp.exists():
        return venv
    env = {**os.environ, "PIP_CACHE_DIR": str(base / "pip-cache"), "PIP_NO_INPUT": "1"}
    env.pop("PYTHONPATH", None)
    _run(sys.executable, "-m", "venv", "--clear", venv, env=env)
    pip = (venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check")
    if how == "wheel":
        wheels = base / "wheel"
        if not list(wheels.glob("*.whl")):
            _run(*pip[:3], "wheel", "-q", "--no-deps", "-w", wheels, ROOT, env=env)
        ours: tuple[str | Path, ...] = (next(wheels.glob("*.whl")),)
    elif how == "editable":
        ours = ("-e", ROOT)
    else:
        ours = ()
    _run(*pip, MODEL_FORGE, *ours, env=env)
    stamp.write_text(how)
    return venv


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def sitecustomize_dir(base: Path) -> Path:
    directory = base / "sitecustomize"
    directory.mkdir(exist_ok=True)
    (directory / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return directory
