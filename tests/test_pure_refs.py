"""Secret references, templates and dotenv files: pure functions, no agent.

The references grammar, its escaping (``%2F`` for ``/``, ``%25`` for ``%``,
UTF-8 escapes for the rest), the ``{{ mf://... }}`` template renderer, the
dotenv reader behind ``exec --env-file`` and ``resolve_all``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelforge_credentials import refs, secret_env
from modelforge_credentials.errors import (
    CredentialNotFoundError,
    CredentialStorageUnavailableError,
    CredentialTooLargeError,
    CredentialValidationError,
)
from modelforge_credentials.secret_env import Binding
from modelforge_credentials.validation import MAX_NAME_LENGTH
from refs_testkit import assert_locates_without_quoting, modules_loaded_by

SECRET = "sk-proj-refs-pure-SECRET-4f2a"

#: Every name the storage layer accepts: printable or not, any plane, up to the limit.
names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=MAX_NAME_LENGTH
)


# -- references ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "key", "reference"),
    [
        ("openai", "api_key", "mf://openai/api_key"),
        ("team/prod", "api%key", "mf://team%2Fprod/api%25key"),
        ("my llm", "a+b=c", "mf://my%20llm/a%2Bb%3Dc"),
        ("café", "ключ", "mf://caf%C3%A9/%D0%BA%D0%BB%D1%8E%D1%87"),
        ("keyring:svc", "user:alice@example", "mf://keyring:svc/user:alice@example"),
        ("a.b-c_d~e", "{x}#\"'", "mf://a.b-c_d~e/%7Bx%7D%23%22%27"),
        ("🔑", "k", "mf://%F0%9F%94%91/k"),
    ],
)
def test_format_and_parse_escape_names(provider: str, key: str, reference: str) -> None:
    assert refs.format_ref(provider, key) == reference
    assert refs.parse_ref(reference) == (provider, key)


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("mf://caf%c3%a9/k", ("café", "k")),  # lower-case hex
        ("mf://café/ключ", ("café", "ключ")),  # printable non-ASCII as it is
        ("mf://%6Fpenai/api_key", ("openai", "api_key")),  # an escaped safe character
        ("mf://a%2f%2fb/%25%25", ("a//b", "%%")),
    ],
)
def test_parse_accepts_non_canonical_spellings(reference: str, expected: tuple[str, str]) -> None:
    assert refs.parse_ref(reference) == expected


@pytest.mark.parametrize(
    ("reference", "problem"),
    [
        ("op://vault/item", "starts with mf://"),
        ("MF://a/b", "starts with mf://"),
        ("openai/api_key", "starts with mf://"),
        ("mf://openai", "one / between the names"),
        ("mf://a/b/c", "%2F"),
        ("mf:///k", "provider must not be empty"),
        ("mf://p/", "key must not be empty"),
        ("mf://p/%G1", "two hex digits"),
        ("mf://p/k%2", "two hex digits"),
        ("mf://p/%FF", "not UTF-8"),
        ("mf://p/%C3", "not UTF-8"),
        ("mf://my llm/k", "written %20"),
        ("mf://p/k}", "written %7D"),
        ('mf://p/"k"', "written %22"),
        ("mf://p/k#x", "written %23"),
        ("mf://p/a+b", "written %2B"),
        ("mf://p/\u200b", "written %E2%80%8B"),  # invisible: never literal
        ("mf://p/%0A", "control character"),
        ("mf://p/%00", "control character"),
        ("mf://p/\x1b[31m", "'\\x1b'"),
        ("mf://" + "x" * (MAX_NAME_LENGTH + 1) + "/k", f"the limit is {MAX_NAME_LENGTH}"),
    ],
)
def test_malformed_references_are_named_with_the_fix(reference: str, problem: str) -> None:
    with pytest.raises(refs.MalformedReferenceError) as caught:
        refs.parse_ref(reference)
    message = str(caught.value)
    assert problem in message
    assert isinstance(caught.value, CredentialValidationError)
    assert reference[:40].encode("unicode_escape").decode() in message.replace("\\\\", "\\")
    assert "\x1b" not in message and "\n" not in message


def test_format_refuses_names_the_store_refuses() -> None:
    for provider, key in (("", "k"), ("p", "a\nb"), ("p", "x" * (MAX_NAME_LENGTH + 1))):
        with pytest.raises(CredentialValidationError):
            refs.format_ref(provider, key)


@given(names, names)
def test_format_then_parse_round_trips(provider: str, key: str) -> None:
    reference = refs.format_ref(provider, key)
    assert refs.parse_ref(reference) == (provider, key)
    assert reference.isascii()
    assert reference.count("/") == 3
    body = reference.removeprefix("mf://").replace("/", "").replace("%", "")
    assert set(body) <= refs.SAFE | set("ABCDEF")


@given(names, names)
def test_the_literal_non_ascii_spelling_reads_the_same(provider: str, key: str) -> None:
    def literal(name: str) -> str:
        return "".join(
            char if char > "\x7f" and char.isprintable() else refs.format_ref(char, "k")[5:-2]
            for char in name
        )

    assert refs.parse_ref(f"mf://{literal(provider)}/{literal(key)}") == (provider, key)


@given(st.one_of(st.text(max_size=60), st.text(max_size=60).map("mf://".__add__)))
def test_parse_never_fails_with_anything_but_a_validation_error(text: str) -> None:
    try:
        provider, key = refs.parse_ref(text)
    except CredentialValidationError:
        return
    assert refs.parse_ref(refs.format_ref(provider, key)) == (provider, key)


# -- templates ------------------------------------------------------------------------

VALUES = {("openai", "api_key"): SECRET, ("team/prod", "tok%en"): "T0K", ("café", "k"): "ü"}


def render(template: bytes) -> bytes:
    return refs.Template(template).render(VALUES)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (b"key: {{ mf://openai/api_key }}\n", f"key: {SECRET}\n".encode()),
        (b"{{mf://openai/api_key}}", SECRET.encode()),
        (b"{{\tmf://openai/api_key   }}", SECRET.encode()),
        (b"a={{ mf://team%2Fprod/tok%25en }};b={{ mf://caf%C3%A9/k }}", "a=T0K;b=ü".encode()),
        ("x={{ mf://café/k }}".encode(), "x=ü".encode()),
        (b"{{{ mf://team%2Fprod/tok%25en }}}", b"{T0K}"),
    ],
)
def test_placeholders_are_replaced(template: bytes, expected: bytes) -> None:
    assert render(template) == expected


@pytest.mark.parametrize(
    "template",
    [
        b"{{ .Values.image }} and {{ op://vault/item/field }}",
        b"bare mf://openai/api_key stays, so does {mf://openai/api_key}",
        b"{ { mf://openai/api_key } }",
        b"{{\nmf://openai/api_key }}",
        b"",
        b"no placeholders at all",
    ],
)
def test_text_that_is_not_a_placeholder_is_left_alone(template: bytes) -> None:
    parsed = refs.Template(template)
    assert parsed.references == []
    assert parsed.render({}) == template


def test_bytes_around_placeholders_pass_through_unchanged() -> None:
    template = b"\xff\xfe latin-1 \xe9\r\n{{ mf://openai/api_key }}\r\n\x00tail"
    assert render(template) == b"\xff\xfe latin-1 \xe9\r\n" + SECRET.encode() + b"\r\n\x00tail"


def test_references_are_listed_in_order_and_rendering_is_one_pass() -> None:
    template = refs.Template(b"{{ mf://b/k }} {{ mf://a/k }} {{ mf://b/k }} {{ mf://caf%c3%a9/k }}")
    assert [(p, k) for _, p, k in template.references] == [
        ("b", "k"),
        ("a", "k"),
        ("b", "k"),
        ("café", "k"),
    ]
    assert template.references[3][0] == "mf://caf%c3%a9/k"  # as written, for messages
    values = {("a", "k"): "{{ mf://b/k }}", ("b", "k"): "B", ("café", "k"): "C"}
    assert template.render(values) == b"B {{ mf://b/k }} B C"


@given(
    st.lists(
        st.one_of(
            st.text(
                alphabet=st.characters(blacklist_characters="{", blacklist_categories=("Cs",)),
                max_size=20,
            ),
            st.sampled_from(sorted(VALUES)),
        ),
        max_size=8,
    ),
    st.sampled_from(["", " ", "  ", "\t"]),
)
def test_rendering_replaces_exactly_the_placeholders(
    pieces: list[str | tuple[str, str]], pad: str
) -> None:
    template = "".join(
        p if isinstance(p, str) else f"{{{{{pad}{refs.format_ref(*p)}{pad}}}}}" for p in pieces
    )
    expected = "".join(p if isinstance(p, str) else VALUES[p] for p in pieces)
    assert render(template.encode()) == expected.encode()


def test_read_capped_refuses_large_missing_and_special_files(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * (refs.MAX_TEMPLATE_BYTES + 1))
    with pytest.raises(refs.InputTooLargeError, match=f"{refs.MAX_TEMPLATE_BYTES:,} bytes"):
        refs.read_capped(big, refs.MAX_TEMPLATE_BYTES, "template")
    assert issubclass(refs.InputTooLargeError, CredentialTooLargeError)
    exact = tmp_path / "exact"
    exact.write_bytes(b"y" * refs.MAX_TEMPLATE_BYTES)
    assert len(refs.read_capped(exact, refs.MAX_TEMPLATE_BYTES, "template")) == (
        refs.MAX_TEMPLATE_BYTES
    )
    with pytest.raises(CredentialValidationError, match="does not exist"):
        refs.read_capped(tmp_path / "absent", 10, "template")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(CredentialStorageUnavailableError, match="not a regular file"):
        refs.read_capped(fifo, 10, "template")  # and does not block on the FIFO
    with pytest.raises(CredentialStorageUnavailableError, match="not a regular file"):
        refs.read_capped(tmp_path, 10, "template")


# -- dotenv files -----------------------------------------------------------------------

DOTENV = """\
# a comment
PLAIN=value
export EXPORTED=yes
  SPACED  =  around   # trailing comment
HASH=a#b
EMPTY=
ONLY_COMMENT= # nothing
SINGLE='lit $HOME \\n "q" # not a comment'
DOUBLE="tab\\there\\nnewline \\"quoted\\" back\\\\slash \\x kept"
MULTI="first
second"
PEM='-----BEGIN-----
abc
-----END-----'  # comment after the quote
AFTER="v"# comment right after
OPENAI_API_KEY=mf://openai/api_key
QUOTED_REF="mf://team%2Fprod/tok%25en"
SINGLE_REF='mf://café/k'   # refs may carry a comment
_UNDERSCORE=1
"""


def test_dotenv_rules() -> None:
    entries = refs.parse_dotenv(DOTENV, "test.env")
    assert {name: value for _, name, value in entries} == {
        "PLAIN": "value",
        "EXPORTED": "yes",
        "SPACED": "around",
        "HASH": "a#b",
        "EMPTY": "",
        "ONLY_COMMENT": "",
        "SINGLE": 'lit $HOME \\n "q" # not a comment',
        "DOUBLE": 'tab\there\nnewline "quoted" back\\slash \\x kept',
        "MULTI": "first\nsecond",
        "PEM": "-----BEGIN-----\nabc\n-----END-----",
        "AFTER": "v",
        "OPENAI_API_KEY": "mf://openai/api_key",
        "QUOTED_REF": "mf://team%2Fprod/tok%25en",
        "SINGLE_REF": "mf://café/k",
        "_UNDERSCORE": "1",
    }
    lines = {name: number for number, name, _ in entries}
    assert lines["PLAIN"] == 2 and lines["MULTI"] == 10 and lines["PEM"] == 12
    assert lines["AFTER"] == 15


def test_dotenv_crlf_and_bom() -> None:
    assert refs.parse_dotenv("\ufeffA=1\r\nB='x\r\ny'\r\n", "f") == [
        (1, "A", "1"),
        (2, "B", "x\ny"),
    ]


#: A template (bytes) or the dotenv file app.env (text), what its error starts
#: with, and what the error names. No message may quote the line: it may hold a secret.
MALFORMED_INPUT = [
    (b"ok\nkey: {{ mf://openai/api_key\n}}", "line 2: ", "does not end with }}"),
    (b"{{ mf://openai/api_key " + SECRET.encode() + b" }}", "line 1: ", "does not end with }}"),
    (b"a\nb\n{{ mf://my llm/k }}", "line 3: ", "'mf://my'"),
    (b"{{ mf://openai/%ZZ }}", "line 1: ", "two hex digits"),
    (b"{{ mf://openai }}", "line 1: ", "one / between the names"),
    (b"{{ mf://openai/api_key/x }}", "line 1: ", "%2F"),
    (b"{{ mf://\xff/k }}", "line 1: ", "not UTF-8"),
    (b"{{ mf://a/%0A }}", "line 1: ", "control character"),
    (f"A=1\n{SECRET}\n", "app.env, line 2: ", "expected NAME=VALUE"),
    (f"export {SECRET}", "app.env, line 1: ", "expected NAME=VALUE"),
    (f"my-var={SECRET}", "app.env, line 1: ", "not a valid environment variable name"),
    (f"1ABC={SECRET}", "app.env, line 1: ", "not a valid environment variable name"),
    (f"={SECRET}", "app.env, line 1: ", "not a valid environment variable name"),
    (f"A=1\nB=2\nC='{SECRET}\n\n", "app.env, line 3: ", "opening ' is never closed"),
    (f'A="{SECRET}\\"', "app.env, line 1: ", 'opening " is never closed'),
    (f'A="x"{SECRET}', "app.env, line 1: ", "only a # comment may follow"),
    (f"A='x\ny' {SECRET}", "app.env, line 2: ", "only a # comment may follow"),
    (f"A={SECRET}\0", "app.env, line 1: ", "NUL character"),
]


@pytest.mark.parametrize(("text", "where", "problem"), MALFORMED_INPUT)
def test_malformed_templates_and_dotenv_lines_give_the_line_never_the_text(
    text: bytes | str, where: str, problem: str
) -> None:
    error: type[CredentialValidationError]
    error = refs.TemplateError if isinstance(text, bytes) else refs.EnvFileError
    with pytest.raises(error) as caught:
        if isinstance(text, bytes):
            refs.Template(text)
        else:
            refs.parse_dotenv(text, "app.env")
    assert_locates_without_quoting(caught.value, where, problem, SECRET, "sk-")
    assert isinstance(caught.value, CredentialValidationError)


@given(st.text(alphabet=st.characters(blacklist_characters="'\0", blacklist_categories=("Cs",))))
def test_single_quoted_values_round_trip(value: str) -> None:
    value = value.replace("\r", "")
    assert refs.parse_dotenv(f"V='{value}'\n", "f") == [(1, "V", value)]


@given(st.text(alphabet=st.characters(blacklist_characters="\0\r", blacklist_categories=("Cs",))))
def test_double_quoted_values_round_trip(value: str) -> None:
    quoted = value.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t")
    assert refs.parse_dotenv(f'V="{quoted}"', "f") == [(1, "V", value)]


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_env_file_bindings_split_plain_values_and_references(tmp_path: Path) -> None:
    plain, bindings = secret_env.env_file_bindings(write(tmp_path, ".env", DOTENV))
    assert plain["PLAIN"] == "value" and "OPENAI_API_KEY" not in plain
    assert bindings == [
        Binding("OPENAI_API_KEY", "openai", "api_key", required=True),
        Binding("QUOTED_REF", "team/prod", "tok%en", required=True),
        Binding("SINGLE_REF", "café", "k", required=True),
    ]


def test_a_later_definition_wins_across_kinds_and_files(tmp_path: Path) -> None:
    first = write(tmp_path, "a.env", "X=mf://p/k\nY=plain\nZ=mf://p/z\nZ=mf://p/z2\n")
    second = write(tmp_path, "b.env", "Y=mf://p/y\nX=plain-x\n")
    plain, bindings = secret_env.env_files_bindings([first, second])
    assert plain == {"X": "plain-x"}
    assert bindings == [Binding("Z", "p", "z2", True), Binding("Y", "p", "y", True)]
    assert secret_env.env_file_bindings(first) == (
        {"Y": "plain"},
        [Binding("X", "p", "k", True), Binding("Z", "p", "z2", True)],
    )


def test_a_malformed_reference_value_names_file_line_and_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "app.env", "A=1\nKEY='mf://openai/api key'\n")
    with pytest.raises(refs.EnvFileError) as caught:
        secret_env.env_file_bindings(path)
    message = str(caught.value)
    assert message.startswith(f"{path}, line 2: KEY: malformed secret reference")
    assert "'mf://openai/api key'" in message and "%20" in message


def test_env_file_encoding_size_and_type(tmp_path: Path) -> None:
    path = write(tmp_path, "latin.env", b"A=1\nB=caf\xe9\n")
    with pytest.raises(refs.EnvFileError, match=r"line 2: not valid UTF-8"):
        secret_env.env_file_bindings(path)
    big = write(tmp_path, "big.env", b"A=" + b"x" * refs.MAX_ENV_FILE_BYTES)
    with pytest.raises(refs.InputTooLargeError):
        secret_env.env_file_bindings(big)
    fifo = tmp_path / "fifo.env"
    os.mkfifo(fifo)
    with pytest.raises(CredentialStorageUnavailableError, match="not a regular file"):
        secret_env.env_file_bindings(fifo)
    with pytest.raises(CredentialValidationError, match="does not exist"):
        secret_env.env_file_bindings(tmp_path / "absent.env")


# -- resolving --------------------------------------------------------------------------


class Store:
    def __init__(self, values: dict[tuple[str, str], str]) -> None:
        self.values = values
        self.asked: list[tuple[str, str]] = []

    def fetch(self, provider: str, key: str) -> str | None:
        self.asked.append((provider, key))
        return self.values.get((provider, key))


def test_resolve_all_fetches_each_reference_once() -> None:
    store = Store({("openai", "api_key"): SECRET, ("p", "k"): "v"})
    bindings = [
        Binding("OPENAI_API_KEY", "openai", "api_key", True),
        Binding("MODELFORGE_OPENAI_API_KEY", "openai", "api_key", True),
        Binding("OTHER", "p", "k", True),
    ]
    assert refs.resolve_all(bindings, store.fetch) == {
        "OPENAI_API_KEY": SECRET,
        "MODELFORGE_OPENAI_API_KEY": SECRET,
        "OTHER": "v",
    }
    assert store.asked == [("openai", "api_key"), ("p", "k")]
    assert refs.resolve_all([], store.fetch) == {}


def test_resolve_all_names_every_unknown_reference_at_once() -> None:
    store = Store({("openai", "api_key"): SECRET})
    bindings = [
        Binding("A", "missing", "one", True),
        Binding("OPENAI_API_KEY", "openai", "api_key", True),
        Binding("B", "team/prod", "tok%en", True),
    ]
    with pytest.raises(refs.UnknownReferencesError) as caught:
        refs.resolve_all(bindings, store.fetch)
    message = str(caught.value)
    assert isinstance(caught.value, CredentialNotFoundError)
    assert caught.value.references == ["A=mf://missing/one", "B=mf://team%2Fprod/tok%25en"]
    assert message.startswith("2 unknown references: A=mf://missing/one, ")
    assert "nothing was run" in message and "modelforge-agent set missing one" in message
    assert SECRET not in message
    assert len(store.asked) == 3  # every reference was asked for before the report


def test_a_single_unknown_reference_says_how_to_store_it() -> None:
    with pytest.raises(refs.UnknownReferencesError) as caught:
        refs.fetch_references(
            [("mf://team%2Fprod/tok%25en", "team/prod", "tok%en")] * 2,
            Store({}).fetch,
            consequence="nothing was written",
        )
    assert str(caught.value) == (
        "unknown reference mf://team%2Fprod/tok%25en: no credential 'tok%en' for provider "
        "'team/prod'; nothing was written. Store it with `modelforge-agent set team/prod "
        "tok%en`"
    )


def test_resolve_all_refuses_a_nul_naming_the_variable_not_the_value() -> None:
    store = Store({("p", "k"): SECRET + "\0"})
    with pytest.raises(CredentialValidationError) as caught:
        refs.resolve_all([Binding("V", "p", "k", True)], store.fetch)
    assert "V: the stored value of mf://p/k contains a NUL" in str(caught.value)
    assert SECRET not in str(caught.value)


# -- import cost ------------------------------------------------------------------------


#: What the reference commands must not load: the parser imports them for --help.
HEAVY = {
    *("typing", "dataclasses", "subprocess", "threading", "pathlib", "argparse"),
    *("asyncio", "json", "shlex", "cryptography", "keyring"),
    "modelforge_credentials.secret_env",
    "modelforge_credentials.files",
    "modelforge_credentials.client.sync",
}


def test_the_reference_modules_import_nothing_heavy() -> None:
    loaded = modules_loaded_by(
        "import modelforge_credentials.cli_refs, modelforge_credentials.refs"
    )
    assert HEAVY & loaded == set()
