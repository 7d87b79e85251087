"""What a user installs: the wheel and sdist built by ``python -m build``.

Slow (a build and two clean virtual environments, from PyPI): marked
``slow``, run by ``python3 tests/run.py --slow`` and CI.
"""

from __future__ import annotations

import email.parser
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import modelforge_credentials

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
VERSION = modelforge_credentials.__version__


def run(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=600, cwd=cwd
    )
    assert done.returncode == 0, f"{argv}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", out, ROOT)
    return out


def wheel_of(dist: Path) -> Path:
    return next(dist.glob("*.whl"))


def sdist_of(dist: Path) -> Path:
    return next(dist.glob("*.tar.gz"))


def clean_venv(tmp_path: Path, name: str) -> Path:
    venv = tmp_path / name
    run(sys.executable, "-m", "venv", venv)
    return venv / "bin"


def test_twine_check_strict_passes(dist: Path) -> None:
    run(sys.executable, "-m", "twine", "check", "--strict", *sorted(dist.iterdir()))


def test_the_wheel_holds_our_package_only_typed_and_licensed(dist: Path) -> None:
    with zipfile.ZipFile(wheel_of(dist)) as wheel:
        names = wheel.namelist()
        info = f"model_forge_credentials-{VERSION}.dist-info"
        metadata = email.parser.Parser().parsestr(wheel.read(f"{info}/METADATA").decode())
        top_level = wheel.read(f"{info}/top_level.txt").decode().split()
    strays = [
        n
        for n in names
        if not n.startswith(("modelforge_credentials/", f"{info}/"))
        and not n.startswith(f"model_forge_credentials-{VERSION}.data/")
    ]
    data = f"model_forge_credentials-{VERSION}.data"
    for shipped in (
        "scripts/modelforge-agent",
        "scripts/git-credential-modelforge",
        "data/share/man/man1/modelforge-agent.1",
        "data/share/bash-completion/completions/modelforge-agent",
        "data/share/zsh/site-functions/_modelforge-agent",
        "data/share/fish/vendor_completions.d/modelforge-agent.fish",
    ):
        assert f"{data}/{shipped}" in names, shipped
    assert not [n for n in names if n.startswith(f"{data}/") and "__pycache__" in n]
    assert strays == []
    assert top_level == ["modelforge_credentials"]
    assert not any(n.startswith(("modelforge/", "bin/")) for n in names)
    assert "modelforge_credentials/py.typed" in names
    assert f"{info}/licenses/LICENSE" in names
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("Project-URL")
    assert "Typing :: Typed" in metadata.get_all("Classifier")
    assert metadata["Version"] == VERSION


def test_the_sdist_carries_what_its_tests_need(dist: Path) -> None:
    with tarfile.open(sdist_of(dist)) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for needed in (
        "LICENSE",
        "tests/conftest.py",
        "tests/agent_harness.py",
        "tests/realpeers.py",
        "tests/run.py",
        "scripts/modelforge-agent",
        "scripts/git-credential-modelforge",
        "share/man/man1/modelforge-agent.1",
        "src/modelforge_credentials/py.typed",
    ):
        assert needed in names, needed
    assert not any("__pycache__" in name for name in names)


def test_the_wheel_installs_in_a_clean_venv_and_runs(dist: Path, tmp_path: Path) -> None:
    bin_dir = clean_venv(tmp_path, "from-wheel")
    run(bin_dir / "pip", "install", "-q", wheel_of(dist))
    expected = f"modelforge-agent {VERSION}\n"
    assert run(bin_dir / "modelforge-agent", "--version").stdout == expected
    assert run(bin_dir / "python", "-m", "modelforge_credentials", "--version").stdout == expected
    launcher = (bin_dir / "modelforge-agent").read_text().splitlines()
    assert launcher[0] == f"#!{bin_dir / 'python'}"  # the plain launcher, shebang rewritten
    assert "import re" not in "\n".join(launcher)
    stray = subprocess.run([bin_dir / "python", "-c", "import bin"], capture_output=True)
    assert stray.returncode == 1


def test_pip_install_of_the_sdist_runs(dist: Path, tmp_path: Path) -> None:
    bin_dir = clean_venv(tmp_path, "from-sdist")
    run(bin_dir / "pip", "install", "-q", sdist_of(dist))
    assert run(bin_dir / "modelforge-agent", "--version").stdout == f"modelforge-agent {VERSION}\n"
