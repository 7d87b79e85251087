"""Commands over secret references (``mf://PROVIDER/KEY``): read, inject.

``read REF`` prints one value, as ``get`` does. ``inject -i TEMPLATE [-o
OUT]`` renders the template's ``{{ mf://... }}`` placeholders (syntax in
refs.py): every reference is resolved before the first byte is written, so
an unknown one (all are named, exit 1) leaves stdout empty and an existing
OUT untouched; OUT is replaced atomically by a new 0600 file, whatever the
template's mode or the umask.
"""

from __future__ import annotations

# Light on purpose: cli_args imports this module to build the parser (for
# --help too); the client, files and refs' readers load inside the commands.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from pathlib import Path

    from .cli import Cli


def add_commands(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Register this module's subcommands (see cli_args.EXTENSIONS)."""
    read = add("read", "print the value of a secret reference mf://PROVIDER/KEY")
    read.add_argument(
        "reference", metavar="REF", help="e.g. mf://openai/api_key (a / in a name: %%2F)"
    )
    read.add_argument(
        "-n", "--no-newline", action="store_true", help="do not print a newline after the value"
    )
    read.set_defaults(run=cmd_read)

    inject = add(
        "inject", "render a template's {{ mf://PROVIDER/KEY }} placeholders with their values"
    )
    inject.add_argument("-i", "--in-file", required=True, metavar="TEMPLATE", help="the template")
    inject.add_argument(
        "-o",
        "--out-file",
        metavar="OUT",
        help="write OUT (mode 0600, replaced atomically) instead of standard output",
    )
    inject.set_defaults(run=cmd_inject)


def cmd_read(cli: Cli) -> int:
    from . import refs

    text = cli.args.reference
    provider, key = refs.parse_ref(text)
    with cli.client() as client:
        values = cli._with_unlock(
            client,
            lambda: refs.fetch_references(
                [(text, provider, key)], client.retrieve, consequence="nothing was printed"
            ),
        )
    cli.stdout.write(values[provider, key] + ("" if cli.args.no_newline else "\n"))
    return 0


def cmd_inject(cli: Cli) -> int:
    from pathlib import Path

    from . import refs
    from .errors import CredentialValidationError

    source = Path(cli.args.in_file)
    out = Path(cli.args.out_file) if cli.args.out_file else None
    if out is not None and _same_file(source, out):
        raise CredentialValidationError(
            f"the output {out} is the template itself; nothing was written. Write to another "
            "file: the template would lose its placeholders"
        )
    template = refs.Template(refs.read_capped(source, refs.MAX_TEMPLATE_BYTES, "template"))
    wanted = template.references
    values: dict[tuple[str, str], str] = {}
    if wanted:
        with cli.client() as client:
            values = cli._with_unlock(
                client,
                lambda: refs.fetch_references(
                    wanted, client.retrieve, consequence="nothing was written"
                ),
            )
    data = template.render(values)
    if out is None:
        _write_stdout(cli, data)
        return 0
    from .files import write_atomic

    write_atomic(out, data, mode=0o600)
    return 0


def _same_file(template: Path, out: Path) -> bool:
    import os

    try:
        return os.path.samefile(template, out)
    except OSError:
        return False  # either is absent: reading or writing says why


def _write_stdout(cli: Cli, data: bytes) -> None:
    """Bytes as they are: the template's encoding and line endings are kept."""
    buffer = getattr(cli.stdout, "buffer", None)
    if buffer is None:  # an in-memory stream
        cli.stdout.write(data.decode("utf-8", "surrogateescape"))
        return
    cli.stdout.flush()
    buffer.write(data)
    buffer.flush()
