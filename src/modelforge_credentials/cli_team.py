"""``modelforge-agent team ...``: team secrets from OpenBao / Vault.

``team add`` and ``team remove`` edit teams.json (0600) in the config
directory and tell a running agent to re-read it; ``team login`` reads the
token, password or secret-id from a no-echo prompt or standard input (never
argv) and hands it to the agent, which logs in and keeps the resulting token
in the local credential store. Nothing here imports hvac.
"""

from __future__ import annotations

# Light on purpose: cli_args imports this module to build the parser.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any

    from .cli import Cli
    from .client.sync import AgentClient
    from .protocol import AnyOp


def add_commands(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Register ``team`` and its subcommands (see cli_args.EXTENSIONS)."""
    team = add("team", "team secrets from OpenBao / Vault (KV v2), cached by the agent")
    sub = team.add_subparsers(dest="team_command", required=True, metavar="TEAM_COMMAND")

    def command(name: str, help: str, run: Callable[[Cli], int]) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help, description=help)
        parser.set_defaults(run=run)
        return parser

    added = command("add", "add (or change) a team: where its secrets are", cmd_add)
    added.add_argument("name")
    added.add_argument("--url", required=True, help="server URL; a cluster: URLs joined by ','")
    added.add_argument("--mount", default="secret", help="KV v2 mount (default: secret)")
    added.add_argument(
        "--prefix", default=None, help="path under the mount (default: the team's name)"
    )
    added.add_argument(
        "--refresh", type=float, default=None, help="seconds between refreshes (default 60)"
    )
    added.add_argument(
        "--max-stale",
        type=float,
        default=None,
        help="seconds a cached copy is served after the last refresh (default 86400)",
    )
    added.add_argument("--ca-cert", default=None, metavar="FILE", help="CA certificate (PEM)")
    login = command("login", "log in: the secret from a no-echo prompt or stdin", cmd_login)
    login.add_argument("name")
    login.add_argument("--method", choices=["token", "userpass", "approle"], default=None)
    login.add_argument("--username", default=None, help="userpass: the user name")
    login.add_argument("--role-id", default=None, help="approle: the role id")
    command("list", "the configured teams, in lookup order", cmd_list)
    status = command("status", "each team's state, freshness and token TTL", cmd_status)
    status.add_argument("--json", action="store_true")
    remove = command("remove", "remove a team, its token and its cached copy", cmd_remove)
    remove.add_argument("name")
    refresh = command("refresh", "refresh now (all teams, or one)", cmd_refresh)
    refresh.add_argument("name", nargs="?")


def _config_dir() -> Path:
    from .backends.encrypted_file import default_config_dir

    return default_config_dir()


def call(client: AgentClient, op: AnyOp, **fields: Any) -> dict[str, object]:
    return client.call(op, **fields)


def _tell_agent(cli: Cli) -> str:
    """Ask a running agent to re-read teams.json; a note on what happened."""
    from .client.sync import AgentNotRunningError
    from .errors import CredentialLockedError, CredentialStorageError
    from .protocol import TeamOp

    try:
        with cli.client() as client:
            call(client, TeamOp.TEAM_REFRESH)
    except AgentNotRunningError:
        return "no agent is running: it reads the settings when it starts"
    except CredentialLockedError:
        return "the agent is locked: it reads the settings at `modelforge-agent unlock`"
    except CredentialStorageError as err:
        return f"the running agent did not take the settings: {err}"
    return "the running agent took the settings"


def cmd_add(cli: Cli) -> int:
    from dataclasses import replace

    from .team.config import TeamConfig, check_team, read_teams, write_teams

    a = cli.args
    directory = _config_dir()
    teams = read_teams(directory)
    old = next((t for t in teams if t.name == a.name), None)
    base = old or TeamConfig(name=a.name, url=a.url)
    changes: dict[str, Any] = {"url": a.url, "mount": a.mount}
    for name in ("prefix", "refresh", "max_stale"):
        if getattr(a, name) is not None:
            changes[name] = getattr(a, name)
    if a.ca_cert is not None:
        import os

        changes["ca_cert"] = os.path.abspath(a.ca_cert)
    team = check_team(replace(base, **changes))
    teams = [team if t.name == a.name else t for t in teams] if old else [*teams, team]
    path = write_teams(directory, teams)
    cli.stdout.write(
        f"{'updated' if old else 'added'} team {team.name}: provider P is "
        f"{team.kv_path('P')} at {team.url} (settings in {path})\n"
    )
    cli.stderr.write(f"{_tell_agent(cli)}; next: `modelforge-agent team login {team.name}`\n")
    return 0


def cmd_login(cli: Cli) -> int:
    from dataclasses import replace

    from .errors import CredentialValidationError
    from .protocol import TeamOp
    from .team.config import find_team, read_teams, write_teams

    a = cli.args
    directory = _config_dir()
    teams = read_teams(directory)
    team = find_team(teams, a.name)
    method = a.method or team.method
    login_name = a.username if method == "userpass" else a.role_id if method == "approle" else None
    login_name = login_name or (team.login_name if method == team.method else None)
    if method != "token" and not login_name:
        what = "--username NAME" if method == "userpass" else "--role-id ID"
        raise CredentialValidationError(
            f"a {method} login needs {what}: `modelforge-agent team login {a.name} "
            f"--method {method} {what}`"
        )
    prompt = {"token": "Token", "userpass": "Password", "approle": "Secret ID"}[method]
    secret = cli.read_secret(f"{prompt} for team {a.name} (not echoed): ")
    if not secret:
        raise CredentialValidationError(f"the {prompt.lower()} is empty; nothing was changed")
    if (method, login_name) != (team.method, team.login_name):
        updated = replace(team, method=method, login_name=login_name)
        write_teams(directory, [updated if t.name == a.name else t for t in teams])
    with cli.client() as client:
        fields = {"team": a.name, "method": method, "secret": secret}
        if login_name:
            fields["login_name"] = login_name
        cli._with_unlock(client, lambda: call(client, TeamOp.TEAM_LOGIN, **fields))
        status = call(client, TeamOp.TEAM_STATUS)["teams"]
    for info in status if isinstance(status, list) else []:
        if info.get("name") == a.name:
            cli.stdout.write(_status_line(info) + "\n")
    return 0


def cmd_list(cli: Cli) -> int:
    from .team.config import read_teams

    for team in read_teams(_config_dir()):
        cli.stdout.write(
            f"{team.name}\t{team.url}\t{team.mount}/{team.path_prefix}\t"
            f"refresh {team.refresh:g}s\tmax-stale {team.max_stale:g}s\n"
        )
    return 0


def cmd_status(cli: Cli) -> int:
    import json

    from .protocol import TeamOp

    with cli.client() as client:
        teams = call(client, TeamOp.TEAM_STATUS)["teams"]
    assert isinstance(teams, list)
    if cli.args.json:
        json.dump(teams, cli.stdout, indent=2, sort_keys=True)
        cli.stdout.write("\n")
    elif not teams:
        cli.stdout.write("no teams; add one with `modelforge-agent team add NAME --url URL`\n")
    for info in [] if cli.args.json else teams:
        cli.stdout.write(_status_line(info) + "\n")
    return 0


def _status_line(info: dict[str, Any]) -> str:
    from .cli import _duration

    ttl = info.get("token_ttl")
    age = info.get("last_refresh_age")
    parts = [
        f"{info['name']}: {info['state']}",
        f"{info['url']} {info['path']}",
        f"{info['providers']} providers",
        f"last refresh {_duration(age)} ago" if age is not None else "never refreshed",
        "token: "
        + (
            "none"
            if not info.get("logged_in")
            else "no expiry"
            if ttl is None
            else f"{_duration(ttl)} left"
        ),
    ]
    if not info.get("serving") and info.get("last_refresh") is not None:
        parts.append("NOT SERVED (older than max-stale)")
    line = ", ".join(parts)
    if info.get("error"):
        line += f"\n  {info['error']}"
    return line


def cmd_remove(cli: Cli) -> int:
    from .team import sealed
    from .team.config import find_team, read_teams, write_teams

    directory = _config_dir()
    teams = read_teams(directory)
    find_team(teams, cli.args.name)
    write_teams(directory, [t for t in teams if t.name != cli.args.name])
    sealed.cache_path(directory, cli.args.name).unlink(missing_ok=True)
    note = _tell_agent(cli)
    cli.stdout.write(
        f"removed team {cli.args.name}; {note} (its token is deleted from the local store "
        "when the agent next reads the settings)\n"
    )
    return 0


def cmd_refresh(cli: Cli) -> int:
    from .protocol import TeamOp

    fields = {"team": cli.args.name} if cli.args.name else {}
    with cli.client() as client:
        teams = cli._with_unlock(client, lambda: call(client, TeamOp.TEAM_REFRESH, **fields))
    for info in teams["teams"]:
        if not cli.args.name or info.get("name") == cli.args.name:
            cli.stdout.write(_status_line(info) + "\n")
    return 0
