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


class VenvError(RuntimeError):
    """A virtual environment could not be made (the message says which step)."""


def require_real_model_forge() -> None:
    import pytest

    if not _ENABLED:
        pytest.skip(f"set {REAL_VARIABLE}=1 to install {MODEL_FORGE} from PyPI (~360 MB)")


def _run(*argv: str | Path, env: dict[str, str] | None = None) -> None:
    try:
        subprocess.run(
            [str(a) for a in argv], check=True, capture_output=True, timeout=900, env=env
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
        detail = getattr(err, "stderr", b"") or b""
        raise VenvError(f"{' '.join(map(str, argv[:4]))} failed: {err} {detail[-800:]!r}") from err


def base_dir(tmp_path_factory: object) -> Path:
    """Where the environments live: ``$MODEL_FORGE_REAL_MODELFORGE_VENV`` or the
    test session's temporary directory."""
    if _KEEP_IN:
        base = Path(_KEEP_IN)
    else:
        base = tmp_path_factory.getbasetemp() / "model-forge-llm"  # type: ignore[attr-defined]
    base.mkdir(parents=True, exist_ok=True)
    return base


_built: dict[Path, Path] = {}


def our_wheel(base: Path, env: dict[str, str]) -> Path:
    """This checkout's wheel, built once per process (a kept venv gets the new one)."""
    if base not in _built:
        wheels = base / f"wheel-{os.getpid()}"
        _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, ROOT, env=env)
        _built[base] = next(wheels.glob("*.whl"))
    return _built[base]


def model_forge_venv(base: Path, how: str) -> Path:
    """A venv with model-forge-llm 2.3.0 and this package installed ``how``:
    ``"wheel"`` (built from this checkout), ``"editable"`` or ``"alone"``
    (model-forge only); ``"ours"`` is this package's wheel without model-forge.
    A venv kept from an earlier run is reused, with this checkout's wheel
    reinstalled. Raises :class:`VenvError`."""
    venv = base / f"venv-{how}"
    stamp = venv / ".ready"
    env = {**os.environ, "PIP_CACHE_DIR": str(base / "pip-cache"), "PIP_NO_INPUT": "1"}
    env.pop("PYTHONPATH", None)
    pip = (venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check")
    wheel = our_wheel(base, env) if how in ("wheel", "ours") else None
    if stamp.exists():
        if wheel is not None:
            _run(*pip, "--no-deps", "--force-reinstall", wheel, env=env)
        return venv
    _run(sys.executable, "-m", "venv", "--clear", venv, env=env)
    ours: tuple[str | Path, ...] = {"editable": ("-e", ROOT), "alone": ()}.get(how, (wheel,))
    _run(*pip, *(() if how == "ours" else (MODEL_FORGE,)), *ours, env=env)
    stamp.write_text(how)
    return venv


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def sitecustomize_dir(base: Path) -> Path:
    directory = base / "sitecustomize"
    directory.mkdir(exist_ok=True)
    (directory / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return directory
