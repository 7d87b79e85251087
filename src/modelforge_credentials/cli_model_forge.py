"""``migrate`` and ``integrate model-forge``: moving model-forge's secrets, and
model-forge itself, onto the agent (the Cli's commands, kept apart)."""

from __future__ import annotations

from .cli import EXIT_NOT_FOUND, EXIT_OK, _counts
from .errors import CredentialValidationError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

    from .cli import Cli
    from .migrate import CredentialMigrator
    from .storage import CredentialStorage


def _migration_storage(cli: Cli) -> CredentialStorage:
    from .manager import default_storage

    return default_storage()


def migrate(cli: Cli) -> int:
    import shlex
    from pathlib import Path

    from .migrate import CredentialMigrator, check_migrations, model_forge_configs

    configs = [Path(p) for p in cli.args.config] or model_forge_configs()
    if cli.args.from_keyring:
        return _migrate_from_keyring(cli, configs)
    if not configs:
        cli.stderr.write(
            "no model-forge config found (~/.config/model-forge/config.json or "
            "./.model-forge/config.json); pass --config PATH\n"
        )
        return EXIT_NOT_FOUND
    storage = _migration_storage(cli)
    migrators = [CredentialMigrator(config, storage) for config in configs]
    moving = not (cli.args.rollback or cli.args.confirm)
    if moving and not cli.args.dry_run:
        check_migrations(migrators, overwrite=cli.args.overwrite)
    for config, migrator in zip(configs, migrators, strict=True):
        quoted = shlex.quote(str(config))
        if cli.args.rollback:
            counts = migrator.rollback()
            cli.stdout.write(f"{config}: put back {_counts(counts)}\n")
            continue
        if cli.args.confirm:
            removed = migrator.confirm()
            done = "removed the plain-text backup" if removed else "no backup to remove"
            cli.stdout.write(f"{config}: {done}\n")
            continue
        plan = migrator.plan()
        _say_which_wins(cli, config, migrator, plan)
        counts = migrator.migrate_credentials(
            dry_run=cli.args.dry_run, overwrite=cli.args.overwrite
        )
        if not counts:
            cli.stdout.write(f"{config}: no secrets to migrate\n")
            continue
        verb = "would move" if cli.args.dry_run else "moved"
        for provider, keys in plan.items():
            cli.stdout.write(f"{config}: {verb} {provider}: {', '.join(keys)}\n")
        if not cli.args.dry_run:
            cli.stdout.write(
                f"  backup with the old secrets: {migrator.backup_path} (0600)\n"
                f"  undo:    modelforge-agent migrate --rollback --config {quoted}\n"
                f"  confirm: modelforge-agent migrate --confirm --config {quoted} "
                "(deletes the backup)\n"
            )
    if moving and cli.args.dry_run:
        # The same checks the real run makes first: its conflicts, exit 2.
        check_migrations(migrators, overwrite=cli.args.overwrite)
    return EXIT_OK


def _say_which_wins(
    cli: Cli, config: Path, migrator: CredentialMigrator, plan: dict[str, list[str]]
) -> None:
    at = migrator.migrated_at()
    if not plan or at is None:
        return
    names = ", ".join(f"{p}/{k}" for p, keys in plan.items() for k in keys)
    cli.stderr.write(
        f"warning: {config} holds secrets again since its migration on {at} "
        f"({names}): model-forge wrote them there. `modelforge-agent integrate "
        "model-forge` makes it write to the agent instead\n"
    )
    if cli.args.overwrite:
        return
    for name in migrator.conflicts():
        cli.stdout.write(
            f"{config}: {name}: the config's value replaces the stored one: the file "
            f"had no secrets after the migration on {at}, so model-forge wrote this "
            "value since and it is the newer one\n"
        )


def _migrate_from_keyring(cli: Cli, configs: list[Path]) -> int:
    import json

    from .backends.auto import system_keyring
    from .migrate import LegacyKeyringImporter

    providers = list(cli.args.provider)
    for config in configs:
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
            providers += [p for p in data.get("providers", {}) if p not in providers]
        except (OSError, ValueError, AttributeError):
            continue
    if not providers:
        raise CredentialValidationError(
            "no provider names to look for: pass --provider NAME or --config PATH"
        )
    importer = LegacyKeyringImporter(system_keyring(), _migration_storage(cli))
    counts = importer.import_credentials(providers, dry_run=cli.args.dry_run)
    verb = "would import" if cli.args.dry_run else "imported"
    cli.stdout.write(f"{verb} from the old keyring layout: {_counts(counts) or 'nothing'}\n")
    return EXIT_OK


def integrate(cli: Cli) -> int:
    from .integrations import model_forge_env as mf

    env = mf.probe(mf.find_python(cli.args.python))
    if cli.args.remove:
        removed = mf.remove_hook(env)
        for path in removed:
            cli.stdout.write(f"removed {path}\n")
        if not removed:
            cli.stdout.write(f"model-forge was not integrated for {env.python}\n")
        return EXIT_OK
    mf.require_model_forge(env)
    mf.require_ours(env)
    version = env.version or "?"
    if cli.args.print:
        cli.stdout.write(
            f"# model-forge-llm {version} at {env.package}\n# would write {env.pth}:\n{mf.PTH_LINE}"
        )
        return EXIT_OK
    written = mf.install_hook(env)
    state = "integrated" if written else "already integrated"
    cli.stdout.write(
        f"model-forge-llm {version} ({env.python}): {state}; it now reads and writes its "
        f"secrets through the agent\n  hook: {env.pth}\n"
        "  undo: modelforge-agent integrate model-forge --remove\n"
    )
    if written:
        cli.stderr.write(
            "secrets still in model-forge's config files stay readable until you run "
            "`modelforge-agent migrate`\n"
        )
    return EXIT_OK
