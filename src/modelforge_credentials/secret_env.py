"""Secrets into a command's environment (``modelforge-agent exec``).

Which variables a provider's credentials fill, by default:

- every provider: ``api_key`` -> ``MODELFORGE_<PROVIDER>_API_KEY`` and
  ``access_token`` -> ``MODELFORGE_<PROVIDER>_ACCESS_TOKEN`` (what model-forge
  reads, named exactly as model-forge names them: upper-cased, ``-`` as
  ``_``, nothing else changed, so ``my.llm`` is ``MODELFORGE_MY.LLM_API_KEY``);
- well-known SDK variables: ``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``,
  ``GOOGLE_API_KEY`` and ``GEMINI_API_KEY``, ``OPENROUTER_API_KEY``, ...

``--env VAR=PROVIDER/KEY`` adds or overrides a variable.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any, BinaryIO

from . import dotenv
from .errors import CredentialNotFoundError, CredentialValidationError
from .input_files import MAX_ENV_FILE_BYTES, read_capped
from .ref_syntax import SCHEME, MalformedReferenceError, parse_ref

WELL_KNOWN: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY",),
    "google": ("GOOGLE_API_KEY", "GEMINI_API_KEY"),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "openrouter": ("OPENROUTER_API_KEY",),
    "mistral": ("MISTRAL_API_KEY",),
    "groq": ("GROQ_API_KEY",),
    "deepseek": ("DEEPSEEK_API_KEY",),
}
MODELFORGE_KEYS = ("api_key", "access_token")


def modelforge_env_part(name: str) -> str:
    """model-forge 2.3's ``_normalize_provider_name_for_env``, exactly."""
    return name.upper().replace("-", "_")


class CommandNotFoundError(CredentialValidationError):
    """exec's command does not exist; exits 127, as env(1) and the shell do."""

    exit_status = 127


class CommandNotExecutableError(CredentialValidationError):
    """exec's command exists but cannot be run; exits 126, as env(1) does."""

    exit_status = 126


def _command_error(argv: list[str], err: OSError) -> CredentialValidationError:
    if isinstance(err, FileNotFoundError):
        return CommandNotFoundError(f"command not found: {argv[0]!r}; check its name and PATH")
    return CommandNotExecutableError(
        f"command not executable: {argv[0]!r} ({err.strerror}); check its mode and type"
    )


@dataclass(frozen=True)
class Binding:
    variable: str
    provider: str
    key: str
    required: bool
    #: 0 for a provider's own name (OPENAI_API_KEY for openai); higher for a
    #: secondary one (GOOGLE_API_KEY for gemini): the lower one wins a variable.
    rank: int = 0


def default_bindings(provider: str, keys: Iterable[str]) -> list[Binding]:
    """Variables filled by ``provider``'s stored ``keys`` (names only)."""
    present = set(keys)
    bindings = []
    for key in MODELFORGE_KEYS:
        if key in present:
            variable = f"MODELFORGE_{modelforge_env_part(provider)}_{modelforge_env_part(key)}"
            bindings.append(Binding(variable, provider, key, required=False))
    if "api_key" in present:
        for rank, variable in enumerate(WELL_KNOWN.get(provider.lower(), ())):
            bindings.append(Binding(variable, provider, "api_key", required=False, rank=rank))
    return bindings


def parse_env_option(option: str) -> Binding:
    variable, sep, target = option.partition("=")
    provider, slash, key = target.rpartition("/")
    if not sep or not slash or not variable or not provider or not key:
        raise CredentialValidationError(
            f"--env expects VAR=PROVIDER/KEY, e.g. OPENAI_API_KEY=openai/api_key (got {option!r})"
        )
    if not dotenv.valid_variable(variable):
        raise CredentialValidationError(f"{variable!r} is not a valid environment variable name")
    return Binding(variable, provider, key, required=True)


def plan(
    names: list[tuple[str, str]],
    providers: list[str] | None,
    overrides: list[Binding],
    *,
    skip_missing: bool,
) -> list[Binding]:
    """Bindings for ``providers`` (every stored one when ``None``) plus overrides.

    Raises :class:`CredentialNotFoundError` for a named provider without any
    credential, unless ``skip_missing``, and :class:`CredentialValidationError`
    when two providers would fill one variable with equal claim ("OpenAI" and
    "openai"): which one is meant cannot be guessed.
    """
    by_provider: dict[str, list[str]] = {}
    for provider, key in names:
        by_provider.setdefault(provider, []).append(key)
    chosen = sorted(by_provider) if providers is None else providers
    bindings: dict[str, Binding] = {}
    for provider in chosen:
        found = default_bindings(provider, by_provider.get(provider, ()))
        if not found and providers and not skip_missing:
            raise CredentialNotFoundError(
                f"provider {provider!r} has no api_key or access_token stored; store one "
                f"with `modelforge-agent set {provider} api_key`, or pass --skip-missing"
            )
        for binding in found:
            held = bindings.get(binding.variable)
            if held is None or binding.rank < held.rank:
                bindings[binding.variable] = binding
            elif binding.rank == held.rank and binding.provider != held.provider:
                raise CredentialValidationError(
                    f"providers {held.provider!r} and {binding.provider!r} would both set "
                    f"{binding.variable}; nothing was run. Choose one with -p, or set the "
                    f"variable yourself with -e {binding.variable}=PROVIDER/KEY"
                )
    for binding in overrides:
        bindings[binding.variable] = binding
    return list(bindings.values())


def resolve(
    bindings: list[Binding], fetch: Callable[[str, str], str | None], *, skip_missing: bool
) -> dict[str, str]:
    values: dict[str, str] = {}
    for binding in bindings:
        value = fetch(binding.provider, binding.key)
        if value is None:
            if skip_missing or not binding.required:
                continue
            raise CredentialNotFoundError(
                f"{binding.variable}: no credential {binding.key!r} for provider "
                f"{binding.provider!r}; store it with `modelforge-agent set "
                f"{binding.provider} {binding.key}`, or pass --skip-missing"
            )
        if "\0" in value:
            raise CredentialValidationError(
                f"{binding.variable}: the stored value contains a NUL character, which an "
                "environment variable cannot hold"
            )
        values[binding.variable] = value
    return values


def exec_replace(argv: list[str], env: Mapping[str, str]) -> None:
    """Become ``argv``: exit status, signals and stdio are the command's own."""
    try:
        os.execvpe(argv[0], argv, dict(env))
    except OSError as err:
        raise _command_error(argv, err) from None


class Masker:
    """Replaces secrets in a byte stream with ``***``, across chunk borders."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.needles = sorted({s.encode() for s in secrets if len(s) >= 4}, key=len, reverse=True)
        self.pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._mask(self.pending + chunk)
        # Hold back only a tail that could still become a secret with the
        # next chunk, so ordinary output (a prompt) is never delayed.
        keep = self._partial_tail(data)
        self.pending = data[len(data) - keep :] if keep else b""
        return data[: len(data) - keep]

    def _partial_tail(self, data: bytes) -> int:
        longest = 0
        for needle in self.needles:
            for size in range(min(len(needle) - 1, len(data)), longest, -1):
                if data.endswith(needle[:size]):
                    longest = size
                    break
        return longest

    def flush(self) -> bytes:
        data, self.pending = self._mask(self.pending), b""
        return data

    def _mask(self, data: bytes) -> bytes:
        for needle in self.needles:
            data = data.replace(needle, b"***")
        return data


#: What signal.signal takes and gives back.
SignalHandler = Callable[[int, FrameType | None], Any] | int | None


#: Signals a masked command gets as if the wrapper were not there.
FORWARDED_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


def run_masked(argv: list[str], env: Mapping[str, str], secrets: Iterable[str]) -> int:
    """Run ``argv`` with its stdout/stderr filtered; returns the exit status.

    Signals the wrapper receives are forwarded; a command killed by a signal
    makes the wrapper die of the same signal, so callers see what they would
    have seen without it.
    """
    secrets = list(secrets)
    started: list[subprocess.Popen[bytes]] = []
    early: list[int] = []

    def forward(sig: int, _frame: object) -> None:
        if started:
            started[0].send_signal(sig)
        else:
            early.append(sig)  # arrived while the command was being started

    # Handlers go in before the command starts, so no signal meant for it
    # can kill the wrapper in between.
    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        proc = subprocess.Popen(argv, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as err:
        _restore_handlers(previous)
        raise _command_error(argv, err) from None
    started.append(proc)
    for pending in early:
        proc.send_signal(pending)
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        threading.Thread(target=_pump, args=(source, sink, Masker(secrets)), daemon=True)
        for source, sink in ((proc.stdout, sys.stdout.buffer), (proc.stderr, sys.stderr.buffer))
    ]
    for pump in pumps:
        pump.start()
    while True:
        try:
            status = proc.wait()
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue
    for pump in pumps:
        pump.join()
    _restore_handlers(previous)
    return _exit_as(status)


def _restore_handlers(previous: Mapping[signal.Signals, SignalHandler]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _exit_as(status: int) -> int:
    """``status`` as the wrapper's own: a command killed by a signal kills the
    wrapper with the same signal."""
    if status < 0:
        died_of = -status
        if died_of not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(died_of, signal.SIG_DFL)
        os.kill(os.getpid(), died_of)
        return 128 + died_of  # not reached unless the signal is ignored
    return status


def _pump(source: BinaryIO, sink: BinaryIO, masker: Masker) -> None:
    while chunk := source.read1(65_536) if hasattr(source, "read1") else source.read(65_536):
        sink.write(masker.feed(chunk))
        sink.flush()
    sink.write(masker.flush())
    sink.flush()


def env_file_bindings(path: str | os.PathLike[str]) -> tuple[dict[str, str], list[Binding]]:
    """Plain values, and a required Binding per reference value, of a dotenv file.

    Raises :class:`~.dotenv.EnvFileError` (file and line) for a malformed line or
    reference, :class:`InputTooLargeError` beyond MAX_ENV_FILE_BYTES,
    NotRegularFileError for a FIFO or device. Resolves nothing.
    """
    return env_files_bindings([path])


def env_files_bindings(
    paths: Iterable[str | os.PathLike[str]],
) -> tuple[dict[str, str], list[Binding]]:
    """As :func:`env_file_bindings` for several files: a later file, like a
    later line, wins a name, whichever of plain or reference each is."""
    chosen: dict[str, str | Binding] = {}
    for path in paths:
        data = read_capped(path, MAX_ENV_FILE_BYTES, "env file")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data.count(b"\n", 0, err.start) + 1
            raise dotenv.EnvFileError(f"{path}, line {line}: not valid UTF-8") from None
        for number, name, value in dotenv.parse_dotenv(text, str(path)):
            if value.startswith(SCHEME):
                try:
                    provider, key = parse_ref(value)
                except MalformedReferenceError as err:
                    raise dotenv.EnvFileError(f"{path}, line {number}: {name}: {err}") from None
                chosen.pop(name, None)  # keep file order: a redefinition moves to the end
                chosen[name] = Binding(name, provider, key, required=True)
            else:
                chosen.pop(name, None)
                chosen[name] = value
    plain = {name: value for name, value in chosen.items() if isinstance(value, str)}
    bindings = [value for value in chosen.values() if not isinstance(value, str)]
    return plain, bindings
