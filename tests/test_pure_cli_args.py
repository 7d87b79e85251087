"""The hand-read fast path for `get`/`exists` agrees with the full parser."""

from __future__ import annotations

import subprocess
import sys

import pytest

from modelforge_credentials.cli import build_parser, quick_args


@pytest.mark.parametrize(
    "argv",
    [
        ["get", "openai", "api_key"],
        ["exists", "openai", "api_key"],
        ["--socket", "/tmp/s.sock", "get", "p", "k"],
        ["--socket=/tmp/s.sock", "--timeout", "2.5", "exists", "p", "k"],
        ["--timeout=3", "get", "p k", "spaced key"],
    ],
)
def test_quick_path_reads_what_argparse_reads(argv: list[str]) -> None:
    quick = quick_args(argv)
    full = build_parser().parse_args(argv)
    assert quick is not None
    for name in ("command", "provider", "key", "socket", "timeout"):
        assert getattr(quick, name) == getattr(full, name), name


@pytest.mark.parametrize(
    "argv",
    [
        ["get", "p"],
        ["get", "p", "k", "extra"],
        ["get", "--help"],
        ["get", "-p", "k"],
        ["set", "p", "k"],
        ["--verbose", "get", "p", "k"],
        ["--socket"],
        ["--timeout", "soon", "get", "p", "k"],
        ["--socket", "a", "--socket", "b", "get", "p", "k"],
        [],
    ],
)
def test_anything_else_goes_to_argparse(argv: list[str]) -> None:
    assert quick_args(argv) is None


def test_the_get_path_imports_no_argparse_typing_or_pathlib() -> None:
    code = (
        "import sys\n"
        "from modelforge_credentials.cli import main\n"
        "status = main(['--socket', '/nonexistent/agent.sock', 'get', 'p', 'k'])\n"
        "heavy = [m for m in ('argparse', 'typing', 'pathlib', 'asyncio', 'cryptography',"
        " 'keyring', 'json', 'dataclasses') if m in sys.modules]\n"
        "print(status, heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "4 []", result.stdout + result.stderr
    assert "/nonexistent/agent.sock" in result.stderr
