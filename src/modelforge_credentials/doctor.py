"""``modelforge-agent doctor``: what works, what does not, and the fix for each."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from . import settings
from .errors import CredentialCorruptedError, CredentialStorageError


def _problem(report: dict[str, Any], what: str, fix: str) -> None:
    report["problems"].append({"problem": what, "fix": fix})


def diagnose(socket_path: Path, timeout: float = 3.0) -> dict[str, Any]:
    """Every check, in order: each backend, the selection, the socket and
    the agent, the teams, model-forge's configs. ``problems`` lists what
    failed, each with its fix."""
    from .backends.auto import BACKEND_VARIABLE
    from .backends.encrypted_file import default_config_dir

    report: dict[str, Any] = {"problems": [], "backends": {}}
    config_dir = default_config_dir()
    report["backends"]["keyring"] = _keyring_report()
    report["backends"]["encrypted-file"] = _file_report(report, config_dir)
    report["backends"]["env"] = _env_report()
    report["selected"] = _selection_report(report)
    report["forced"] = settings.text(BACKEND_VARIABLE)
    report["socket"] = _socket_report(report, socket_path, timeout)
    report["teams"] = _team_report(report, config_dir, socket_path, timeout)
    report["model_forge_configs"] = _config_report(report)
    return report


def _keyring_report() -> dict[str, Any]:
    """Whether the system keyring works, and if not whether D-Bus is why."""
    from .backends.auto import keyring_usable

    bus = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    ok, why = keyring_usable()
    info: dict[str, Any] = {"usable": ok, "detail": why, "dbus_session": bool(bus)}
    if not ok and not bus and os.name == "posix" and not _is_macos():
        info["detail"] = f"{why}; no D-Bus session (DBUS_SESSION_BUS_ADDRESS is unset)"
    elif not ok and bus:
        answering = _bus_answers(bus)
        info["dbus_answers"] = answering
        info["detail"] = (
            f"{why}; no Secret Service on the session bus (start gnome-keyring or KWallet)"
            if answering
            else f"{why}; the D-Bus session bus at {bus} does not answer"
        )
    return info


def _file_report(report: dict[str, Any], config_dir: Path) -> dict[str, Any]:
    """The encrypted file: usable, its mode, and its directory's owner and mode."""
    from .backends.auto import file_usable
    from .backends.encrypted_file import CREDENTIALS_FILE

    ok, why = file_usable(config_dir)
    path = config_dir / CREDENTIALS_FILE
    info: dict[str, Any] = {"usable": ok, "detail": why, "path": str(path), "exists": path.exists()}
    if path.exists():
        info["mode"] = f"{stat.S_IMODE(path.stat().st_mode):o}"
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            _problem(report, f"{path} is readable by others", f"chmod 600 {path}")
        _check_file_opens(report, config_dir, info)
    _check_config_dir(report, config_dir)
    if not ok:
        _problem(
            report,
            f"the encrypted file cannot be used: {why}",
            "set MODEL_FORGE_CONFIG_DIR to a writable directory",
        )
    return info


def _check_file_opens(report: dict[str, Any], config_dir: Path, info: dict[str, Any]) -> None:
    """Read the file's header (and a key-file store's whole body): damage shows now."""
    from .backends.encrypted_file import EncryptedFileStorage

    try:
        storage = EncryptedFileStorage(config_dir)
        info["protection"] = storage.protection  # the header, digest checked
        if info["protection"] == "keyfile":
            storage.load()  # no passphrase needed: decrypt, so damage shows now
            info["verified"] = "whole file"
            _problem(
                report,
                "the encrypted file is protected by a key file beside it "
                "(that stops casual reading only)",
                "set a passphrase: modelforge-agent passwd",
            )
        else:
            info["verified"] = "header (the body is checked when unlocked)"
    except CredentialStorageError as err:
        info["error"] = str(err)
        damaged = isinstance(err, CredentialCorruptedError)
        _problem(
            report,
            f"the encrypted file cannot be read: {err}",
            "modelforge-agent restore-backup --dry-run, then modelforge-agent restore-backup"
            if damaged
            else "see the message",
        )


def _check_config_dir(report: dict[str, Any], config_dir: Path) -> None:
    from .files import UnsafeDirectoryError, check_own_directory

    try:
        check_own_directory(config_dir, settings.CONFIG_DIR)
    except UnsafeDirectoryError as err:
        what, _, fix = str(err).partition(". ")
        _problem(report, what, fix)
    else:
        if config_dir.exists() and stat.S_IMODE(config_dir.stat().st_mode) & 0o077:
            _problem(
                report, f"{config_dir} is readable by group or others", f"chmod 700 {config_dir}"
            )


def _env_report() -> dict[str, Any]:
    from .backends.env import EnvVarStorage

    env_names = EnvVarStorage().list_keys()
    return {"usable": bool(env_names), "variables": len(env_names)}


def _selection_report(report: dict[str, Any]) -> dict[str, Any] | None:
    """The backend an agent started now would choose, and why."""
    from .backends.auto import select_backend

    try:
        selection = select_backend()
    except CredentialStorageError as err:
        _problem(
            report,
            f"no backend is usable: {err}",
            "install a keyring, or set MODEL_FORGE_CONFIG_DIR",
        )
        return None
    return {"backend": selection.storage.name, "reason": selection.reason}


def _config_report(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Plain-text secrets left in (or written again to) model-forge's configs."""
    import shlex

    from .migrate import migration_date, model_forge_configs, secret_names

    found = []
    for config in model_forge_configs():
        entry: dict[str, Any] = {"path": str(config), "migrated_at": migration_date(config)}
        try:
            names = secret_names(config)
        except CredentialStorageError as err:
            entry["error"] = str(err)
            _problem(report, f"{config} cannot be read: {err}", "fix the file by hand")
            found.append(entry)
            continue
        entry["secrets"] = names
        if names:
            which = ", ".join(sorted(names))
            again = (
                f" again since its migration on {entry['migrated_at']} (model-forge wrote them)"
                if entry["migrated_at"]
                else ""
            )
            _problem(
                report,
                f"{config} holds plain-text secrets{again} for {which}",
                f"modelforge-agent migrate --config {shlex.quote(str(config))}; then "
                "`modelforge-agent integrate model-forge` so model-forge writes to the agent",
            )
        found.append(entry)
    return found


def _socket_report(report: dict[str, Any], socket_path: Path, timeout: float) -> dict[str, Any]:
    from .client.sync import AgentClient
    from .daemon.runtime import AgentRuntimeError, check_private_dir
    from .errors import UntrustedAgentError

    info: dict[str, Any] = {"path": str(socket_path), "directory_ok": None, "agent": None}
    directory = socket_path.parent
    if directory.exists() or directory.is_symlink():
        try:
            check_private_dir(directory, create=False)
            info["directory_ok"] = True
        except AgentRuntimeError as err:
            info["directory_ok"] = False
            _problem(report, str(err).split(";")[0], str(err).split(";", 1)[-1].strip())
    try:
        with AgentClient(socket_path, timeout=timeout) as client:
            status = client.status()
        info["agent"] = {
            k: status.get(k)
            for k in ("pid", "started_by", "backend", "reason", "protection", "locked", "version")
        }
        if socket_path.exists():
            mode = stat.S_IMODE(socket_path.stat().st_mode)
            info["mode"] = f"{mode:o}"
    except UntrustedAgentError as err:
        info["error"] = str(err)
        if info["directory_ok"] is not False:  # else reported above, with its fix
            problem, _, fix = str(err).partition("; ")
            _problem(report, problem, fix)
    except CredentialStorageError as err:
        info["error"] = str(err)
        if info["directory_ok"] is not False:
            _problem(
                report,
                "no agent answers on the socket",
                'start one: eval "$(modelforge-agent start)"',
            )
    return info


def _team_report(
    report: dict[str, Any], config_dir: Path, socket_path: Path, timeout: float
) -> list[dict[str, Any]]:
    """Each team: reachability, seal, TLS (probed here), token TTL and last refresh
    (from the agent, which holds the token)."""
    from .team.config import teams_path

    if not teams_path(config_dir).exists():
        return []
    from .team.health import team_report

    agent_teams = None
    if report["socket"].get("agent"):
        from .cli_team import call
        from .client.sync import AgentClient
        from .protocol import TeamOp

        try:
            with AgentClient(socket_path, timeout=timeout) as client:
                teams = call(client, TeamOp.TEAM_STATUS)["teams"]
            agent_teams = teams if isinstance(teams, list) else None
        except CredentialStorageError as err:
            _problem(report, f"the agent did not report its teams: {err}", "see the message")
    entries, problems = team_report(config_dir, agent_teams, timeout)
    for what, fix in problems:
        _problem(report, what, fix)
    return entries


def _bus_answers(address: str) -> bool:
    """Whether something accepts connections at a D-Bus address (unix only)."""
    import socket

    for part in address.split(";"):
        transport, _, params = part.partition(":")
        if transport != "unix":
            continue
        options = dict(p.split("=", 1) for p in params.split(",") if "=" in p)
        target = options.get("path") or (
            "\0" + options["abstract"] if "abstract" in options else None
        )
        if target is None:
            continue
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            try:
                sock.connect(target)
                return True
            except OSError:
                continue
    return False


def _is_macos() -> bool:
    import sys

    return sys.platform == "darwin"


def render(report: dict[str, Any]) -> str:
    lines = []
    for name, info in report["backends"].items():
        mark = "ok " if info.get("usable") else "-- "
        detail = info.get("detail") or (
            f"{info.get('variables')} variables" if name == "env" else ""
        )
        extra = f", protection {info['protection']}" if info.get("protection") else ""
        lines.append(f"{mark}{name:15} {detail}{extra}")
    selected = report.get("selected")
    lines.append(
        f"selected:          {selected['backend']} ({selected['reason']})"
        if selected
        else "selected:          none"
    )
    sock = report["socket"]
    lines.append(
        f"socket:            {sock['path']}"
        + (f" (mode {sock['mode']})" if sock.get("mode") else "")
    )
    agent = sock.get("agent")
    if agent:
        lines.append(
            f"agent:             pid {agent['pid']}, started by {agent['started_by']}, "
            f"backend {agent['backend']}, {'locked' if agent['locked'] else 'unlocked'}"
        )
    else:
        lines.append("agent:             not running")
    for team in report.get("teams", []):
        lines.append(_team_line(team))
    if report["problems"]:
        lines.append("")
        lines.append("problems:")
        for item in report["problems"]:
            lines.append(f"  - {item['problem']}")
            lines.append(f"    fix: {item['fix']}")
    else:
        lines.append("no problems found")
    return "\n".join(lines) + "\n"


def _team_line(team: dict[str, Any]) -> str:
    agent = team.get("agent") or {}
    state = "sealed" if team.get("sealed") else "up" if team.get("reachable") else "unreachable"
    ttl = agent.get("token_ttl")
    age = agent.get("last_refresh_age")
    return (
        f"team {team['name']:12} {team.get('url')} {state}, TLS {team.get('tls')}, "
        f"token {'no expiry' if ttl is None else f'{ttl:.0f} s left'}, last refresh "
        + ("never" if age is None else f"{age:.0f} s ago")
        + f" ({agent.get('state', 'agent not running')})"
    )
