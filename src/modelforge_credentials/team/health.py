"""``doctor``'s view of each team: the server probed directly, the agent asked.

The probe is the unauthenticated ``sys/health`` endpoint, read with urllib
(no hvac, no token): reachability, seal status and TLS. Token TTL and the
last refresh come from the agent's ``team_status``, which holds the token.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..errors import CredentialStorageError
from .config import TeamConfig, read_teams

#: Answer 200 whatever the node's role, so the body says sealed / standby.
HEALTH = "/v1/sys/health?standbyok=true&perfstandbyok=true&sealedcode=200&uninitcode=200"


def probe(team: TeamConfig, timeout: float) -> dict[str, Any]:
    """Each URL of ``team`` in turn, until one answers."""
    result: dict[str, Any] = {}
    for url in [u.strip() for u in team.url.split(",") if u.strip()]:
        result = _probe_one(url, team.ca_cert, timeout)
        if result["reachable"]:
            break
    return result


def _probe_one(url: str, ca_cert: str | None, timeout: float) -> dict[str, Any]:
    https = url.startswith("https:")
    context = ssl.create_default_context(cafile=ca_cert) if https else None
    info: dict[str, Any] = {"url": url, "reachable": False, "sealed": None}
    info["tls"] = "verified" if https else "none (plain http)"
    try:
        with urllib.request.urlopen(
            url.rstrip("/") + HEALTH, timeout=timeout, context=context
        ) as r:
            body = json.loads(r.read(65536))
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, ssl.SSLError):
            info["tls"] = f"failed: {getattr(reason, 'verify_message', None) or reason.reason}"
        info["error"] = str(reason)[:200]
        return info
    except (OSError, ValueError) as err:
        info["error"] = f"{type(err).__name__}: {str(err)[:200]}"
        return info
    info.update(
        reachable=True,
        sealed=bool(body.get("sealed")),
        initialized=bool(body.get("initialized")),
        standby=bool(body.get("standby")),
        version=body.get("version"),
    )
    return info


def team_report(
    config_dir: Path, agent_teams: list[dict[str, Any]] | None, timeout: float
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Every configured team's probe and agent view; the problems with their fixes."""
    problems: list[tuple[str, str]] = []
    try:
        teams = read_teams(config_dir)
    except CredentialStorageError as err:
        return [], [(str(err).split("; ")[0], str(err).split("; ")[-1])]
    by_name = {t.get("name"): t for t in agent_teams or []}
    out = []
    for team in teams:
        entry = {"name": team.name, **probe(team, timeout)}
        agent = by_name.get(team.name)
        entry["agent"] = agent
        name = team.name
        if not entry["reachable"]:
            if str(entry["tls"]).startswith("failed"):
                problems.append(
                    (
                        f"team {name}: TLS to {team.url} {entry['tls']}",
                        f"modelforge-agent team add {name} --url {team.url} --ca-cert FILE",
                    )
                )
            else:
                problems.append(
                    (
                        f"team {name}: {team.url} does not answer ({entry.get('error')})",
                        "check the server and the network; cached secrets are served until "
                        "max-stale",
                    )
                )
        elif entry["sealed"]:
            problems.append((f"team {name}: the server is sealed", "ask its operator to unseal it"))
        if agent is None:
            if agent_teams is not None:
                problems.append(
                    (f"team {name}: the agent has not loaded it", "modelforge-agent team refresh")
                )
            continue
        if agent.get("needs_login") or not agent.get("logged_in"):
            problems.append(
                (
                    f"team {name}: {agent.get('error') or 'not logged in'}",
                    f"modelforge-agent team login {name}",
                )
            )
        elif agent.get("last_refresh") is not None and not agent.get("serving"):
            problems.append(
                (
                    f"team {name}: its cached copy is older than max-stale and is not served",
                    f"fix the server, then modelforge-agent team refresh {name}",
                )
            )
        out.append(entry)
    return out, problems
