"""model-forge's config file, as a migration reads and rewrites it.

Secrets live in ``providers.<p>.auth_data`` (what model-forge writes) and
``providers.<p>.credentials`` (the older design's name). Every read refuses a
FIFO or device; a config with other hard links is refused before it is
rewritten (its other names would keep the plain-text secrets), and a rewrite
keeps everything but those two sections equal as JSON, in the file's own
indentation. The marker ``<config>.migrated`` (a date, no secrets) records
that a file was left without secrets.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, BinaryIO

from .errors import CredentialValidationError
from .files import open_regular, write_atomic
from .migration_errors import MigrationConflictError, UnsafeConfigError

SECRET_SECTIONS = ("auth_data", "credentials")
MARKER_SUFFIX = ".migrated"


def model_forge_configs() -> list[Path]:
    """model-forge's config files that exist: the global one, then the local
    one of the current directory (model-forge uses the local one instead of
    the global one when it exists)."""
    candidates = (
        Path.home() / ".config" / "model-forge" / "config.json",
        Path.cwd() / ".model-forge" / "config.json",
    )
    return [path for path in candidates if path.exists()]


def read_config(path: Path) -> bytes | None:
    """The file's bytes, ``None`` if absent; a FIFO or device is refused."""
    try:
        with open_regular(path) as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def load_config(path: Path, raw: bytes) -> dict[str, Any]:
    """A model-forge config's JSON object; invalid input says where and what to do."""
    try:
        config = json.loads(raw)
    except ValueError as err:
        raise CredentialValidationError(
            f"{path} is not valid JSON (line {getattr(err, 'lineno', '?')}); "
            "fix it by hand before migrating"
        ) from None
    except RecursionError:
        raise CredentialValidationError(
            f"{path} is nested too deeply to be a model-forge config; "
            "fix it by hand before migrating"
        ) from None
    if not isinstance(config, dict):
        raise CredentialValidationError(f"{path} is not a model-forge config (not a JSON object)")
    return config


def config_secrets(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Provider -> the secrets of both sections, merged; raises MigrationConflictError
    when the two sections hold different values for one key."""
    providers = config.get("providers")
    if not isinstance(providers, dict):
        return {}
    found: dict[str, dict[str, Any]] = {}
    for provider, data in providers.items():
        if not isinstance(data, dict):
            continue
        merged: dict[str, Any] = {}
        for section in SECRET_SECTIONS:
            values = data.get(section)
            if not isinstance(values, dict):
                continue
            for key, value in values.items():
                if key in merged and merged[key] != value:
                    raise MigrationConflictError(
                        f"provider {provider!r} has two different values for {key!r} (in "
                        "auth_data and in credentials); keep the right one, delete the "
                        "other from the config, and re-run the migration"
                    )
                merged[key] = value
        if merged:
            found[provider] = merged
    return found


def without_secrets(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` without the secret sections; everything else is kept."""
    result = dict(config)
    providers = config.get("providers")
    if isinstance(providers, dict):
        result["providers"] = {
            name: (
                {k: v for k, v in data.items() if k not in SECRET_SECTIONS}
                if isinstance(data, dict)
                else data
            )
            for name, data in providers.items()
        }
    return result


def dump_like(config: dict[str, Any], original: bytes) -> bytes:
    """``config`` as JSON in the look of ``original``: its indentation, its final newline."""
    # model-forge writes indent=4; keep whatever the original used where it
    # is recognisable.
    match = re.search(rb"\n( +)\S", original)
    indent = len(match.group(1)) if match else None
    text = json.dumps(config, indent=indent, ensure_ascii=False)
    return (text + ("\n" if original.endswith(b"\n") else "")).encode("utf-8")


def refuse_hard_links(config: Path, links: int) -> None:
    """Raise UnsafeConfigError when ``config`` has other names to leave secrets under."""
    if links > 1:
        raise UnsafeConfigError(
            f"{config} has {links} hard links: rewriting it would leave the plain-text secrets "
            f"under its other names. Nothing was changed. Find them with `find / -xdev "
            f"-samefile {config}`, remove the others (or break the link: `cp -p {config} "
            f"{config}.copy && mv {config}.copy {config}`), and re-run"
        )


def written_meanwhile(handle: BinaryIO, before: os.stat_result) -> bytes | None:
    """What a writer put into the file open as ``handle`` since ``before``, or None.

    model-forge rewrites its config without a lock: a writer that opened the
    file before our rename writes into the replaced inode, whose content is
    then nowhere else."""
    after = os.fstat(handle.fileno())
    if (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns):
        return None
    handle.seek(0)
    return handle.read()


def marker_path(config: Path) -> Path:
    """The marker beside the file ``config`` resolves to (a symlink's target)."""
    target = Path(os.path.realpath(config))
    return target.with_name(target.name + MARKER_SUFFIX)


def migration_date(config: Path) -> str | None:
    """When ``config`` was last left without secrets (ISO 8601), if ever."""
    try:
        record = json.loads(marker_path(config).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    at = record.get("migrated_at") if isinstance(record, dict) else None
    return at if isinstance(at, str) else None


def write_marker(marker: Path) -> None:
    """Record at ``marker`` that its config was just left without secrets."""
    from datetime import UTC, datetime

    at = datetime.now(UTC).isoformat(timespec="seconds")
    record = {"migrated_at": at, "by": "modelforge-agent migrate", "secrets": "none here"}
    write_atomic(marker, (json.dumps(record) + "\n").encode("utf-8"), mode=0o600)
