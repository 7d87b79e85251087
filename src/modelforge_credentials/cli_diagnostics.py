"""``doctor`` and ``log``: what is wrong and how to fix it, and what the agent
did (the access log, names only). The Cli's commands, kept apart."""

from __future__ import annotations

from .cli import EXIT_NOT_FOUND, EXIT_OK, EXIT_UNAVAILABLE
from .errors import CredentialStorageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .cli import Cli


def doctor(cli: Cli) -> int:
    import json
    from pathlib import Path

    from .doctor import diagnose, render

    report = diagnose(Path(cli.socket), timeout=min(cli.args.timeout, 3.0))
    if cli.args.json:
        json.dump(report, cli.stdout, indent=2, sort_keys=True)
        cli.stdout.write("\n")
    else:
        cli.stdout.write(render(report))
    return EXIT_OK if not report["problems"] else EXIT_UNAVAILABLE


def show_log(cli: Cli) -> int:
    from pathlib import Path

    from .daemon.audit import default_audit_path, read_entries, render_entry, text_view

    path = Path(cli.args.file) if cli.args.file else None
    if path is None:
        try:
            with cli.client() as client:
                configured = client.status().get("audit_log")
            path = Path(str(configured)) if configured else None
        except CredentialStorageError:
            path = None
    path = path or default_audit_path()
    try:
        lines = read_entries(path)
    except FileNotFoundError:
        cli.stderr.write(
            f"no audit log at {path}; start the agent with `serve --audit-log` "
            "(or MODEL_FORGE_AUDIT_LOG=1) to record one\n"
        )
        return EXIT_NOT_FOUND
    for line in lines[-cli.args.lines :] if cli.args.lines else lines:
        if cli.args.json:
            cli.stdout.write(line + "\n")  # ASCII JSON: escaped already
            continue
        shown = render_entry(line)
        if shown is None:
            shown = f"(not an entry: {text_view(line[:200])})"
        cli.stdout.write(shown + "\n")
    return EXIT_OK
