"""Secret references: ``mf://PROVIDER/KEY``, in templates and dotenv files.

A reference names one stored credential; it is not a secret, so messages
may quote it. Its grammar is :mod:`.ref_syntax`'s, templates are
:mod:`.ref_template`'s and dotenv files :mod:`.dotenv`'s; both kinds of file
are read under the caps of :mod:`.input_files`. This module resolves
references against the store, every one before any value is used, and is
where the rest of the package imports all of these names from.
"""

from __future__ import annotations

from .dotenv import EnvFileError, parse_dotenv, valid_variable
from .errors import CredentialNotFoundError, CredentialValidationError
from .input_files import MAX_ENV_FILE_BYTES, MAX_TEMPLATE_BYTES, InputTooLargeError, read_capped
from .ref_syntax import SAFE, SCHEME, MalformedReferenceError, format_ref, parse_ref
from .ref_template import Template, TemplateError

# typing and secret_env (subprocess, threading) stay out of the import: the
# parser loads the reference commands for --help.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from .secret_env import Binding

    Fetch = Callable[[str, str], str | None]

__all__ = [
    "MAX_ENV_FILE_BYTES",
    "MAX_TEMPLATE_BYTES",
    "SAFE",
    "SCHEME",
    "EnvFileError",
    "InputTooLargeError",
    "MalformedReferenceError",
    "Template",
    "TemplateError",
    "UnknownReferencesError",
    "fetch_references",
    "format_ref",
    "parse_dotenv",
    "parse_ref",
    "read_capped",
    "resolve_all",
    "valid_variable",
]


class UnknownReferencesError(CredentialNotFoundError):
    """References that name no stored credential; all of them are listed
    at once (``references``). Store each with ``modelforge-agent set
    PROVIDER KEY``; nothing was written or run."""

    def __init__(self, references: Sequence[tuple[str, str, str]], consequence: str) -> None:
        import shlex

        self.references = [shown for shown, _, _ in references]
        _, provider, key = references[0]
        command = f"modelforge-agent set {shlex.quote(provider)} {shlex.quote(key)}"
        if len(references) == 1:
            message = (
                f"unknown reference {self.references[0]}: no credential {key!r} for provider "
                f"{provider!r}; {consequence}. Store it with `{command}`"
            )
        else:
            message = (
                f"{len(references)} unknown references: {', '.join(self.references)}; "
                f"{consequence}. Store each with `modelforge-agent set PROVIDER KEY` "
                f"(e.g. `{command}`); `modelforge-agent list` shows the stored names"
            )
        super().__init__(message)


def fetch_references(
    references: Iterable[tuple[str, str, str]], fetch: Fetch, *, consequence: str
) -> dict[tuple[str, str], str]:
    """Values of ``(shown, provider, key)`` references, each fetched once.

    Raises :class:`UnknownReferencesError` naming every unknown one (by its
    ``shown`` text) after asking for all of them, so one run reports all.
    """
    fetched: dict[tuple[str, str], str | None] = {}
    missing: dict[str, tuple[str, str, str]] = {}
    for shown, provider, key in references:
        if (provider, key) not in fetched:
            fetched[provider, key] = fetch(provider, key)
        if fetched[provider, key] is None:
            missing.setdefault(shown, (shown, provider, key))
    if missing:
        raise UnknownReferencesError(list(missing.values()), consequence)
    return {name: value for name, value in fetched.items() if value is not None}


def resolve_all(
    bindings: Iterable[Binding], fetch: Fetch, *, consequence: str = "nothing was run"
) -> dict[str, str]:
    """``{variable: value}`` for every binding, all fetched before any is used.

    Raises :class:`UnknownReferencesError` (CredentialNotFoundError) naming
    every unknown reference at once, and CredentialValidationError for a
    value with a NUL (no environment variable can hold one).
    """
    bindings = list(bindings)
    values = fetch_references(
        ((f"{b.variable}={format_ref(b.provider, b.key)}", b.provider, b.key) for b in bindings),
        fetch,
        consequence=consequence,
    )
    resolved: dict[str, str] = {}
    for binding in bindings:
        value = values[binding.provider, binding.key]
        if "\0" in value:
            reference = format_ref(binding.provider, binding.key)
            raise CredentialValidationError(
                f"{binding.variable}: the stored value of {reference} contains a NUL "
                f"character, which an environment variable cannot hold; {consequence}"
            )
        resolved[binding.variable] = value
    return resolved
