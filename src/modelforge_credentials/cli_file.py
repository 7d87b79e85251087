"""``passwd`` and ``restore-backup``: the encrypted file's protection and its
previous generation (the Cli's commands, kept apart)."""

from __future__ import annotations

from .cli import EXIT_OK, _duration
from .errors import CredentialLockedError, CredentialValidationError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

    from .cli import Cli


def passwd(cli: Cli) -> int:
    from .backends.encrypted_file import EncryptedFileStorage

    config_dir, agent_running = _file_dir(cli)
    client = cli.client()
    storage = EncryptedFileStorage(config_dir)
    current = None
    if storage.protection == "passphrase" and storage.path.exists():
        current = cli.read_secret(
            "Current passphrase: ", description=f"The current passphrase of {storage.path}"
        )
    new = cli.read_secret(
        "New passphrase: ", description=f"A new passphrase for {storage.path}", confirm=True
    )
    if not new:
        raise CredentialValidationError("the new passphrase is empty; nothing was changed")
    storage.set_passphrase(new, current=current)
    if agent_running:
        client.lock()
        client.unlock(new)
        client.close()
    cli.stderr.write(f"passphrase set for {storage.path}\n")
    return EXIT_OK


def restore_backup(cli: Cli) -> int:
    import time as clock

    from .backends.encrypted_file import EncryptedFileStorage

    storage = EncryptedFileStorage(_file_dir(cli)[0])
    passphrase: str | None = None
    try:
        info = storage.inspect_backup()
    except CredentialLockedError:
        passphrase = cli.read_secret(
            "Passphrase of the backup: ",
            description=f"The passphrase of the backup of {storage.path}",
        )
        info = storage.inspect_backup(passphrase)
    age = _duration(clock.time() - info.modified)
    names = ", ".join(f"{p}/{k}" for p, k in info.names) or "nothing"
    cli.stdout.write(
        f"backup {info.path}: written {age} ago, {info.protection} protection, "
        f"{len(info.names)} credentials: {names}\n"
    )
    if cli.args.dry_run:
        return EXIT_OK
    if not cli.args.yes:
        if not cli._interactive():
            raise CredentialValidationError(
                "restore-backup replaces the current file; pass --yes to do it without a "
                "question (or --dry-run to look only)"
            )
        cli.stderr.write(f"Replace {storage.path} with this backup? [y/N] ")
        cli.stderr.flush()
        if cli.stdin.readline().strip().lower() not in ("y", "yes"):
            cli.stderr.write("nothing was changed\n")
            return EXIT_OK
    kept = storage.restore_backup(passphrase)
    where = f"; the file it replaced is kept as {kept}" if kept else ""
    cli.stdout.write(f"restored {storage.path} from {info.path}{where}\n")
    return EXIT_OK


def _file_dir(cli: Cli) -> tuple[Path | None, bool]:
    """The encrypted file's directory (the running agent's, else
    --config-dir, else the default), and whether an agent runs."""
    from pathlib import Path

    from .client.sync import AgentNotRunningError

    try:
        with cli.client() as client:
            status = client.status()
    except AgentNotRunningError:
        return (Path(cli.args.config_dir) if cli.args.config_dir else None), False
    if status.get("backend") != "encrypted-file" or not status.get("path"):
        raise CredentialValidationError(
            f"the agent uses the {status.get('backend')} backend; this command applies to "
            "the encrypted file (MODEL_FORGE_BACKEND=encrypted-file)"
        )
    return Path(str(status["path"])).parent, True
