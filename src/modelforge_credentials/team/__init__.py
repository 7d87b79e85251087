"""Team secrets from OpenBao / Vault (KV version 2), served by the agent.

Provider P of a team is the KV v2 secret ``<mount>/<prefix>/<P>``; its fields
are P's keys. The agent answers from its local store first, then from the
teams in the order they were added, out of an in-memory copy refreshed in
the background and persisted sealed on disk (:mod:`.sealed`).

Light on purpose: the CLI and the agent import this package (names, the
settings file) without hvac; only :mod:`.source` speaks to the server.
"""

from __future__ import annotations

#: Local-store provider holding team NAME's login token and cache key. The
#: agent hides these names from every client (list, get, set, delete).
RESERVED_PREFIX = "modelforge-team:"
TOKEN_KEY = "token"
CACHE_KEY = "cache-key"

#: The extra to install when hvac is missing (every such message quotes it).
INSTALL_HINT = "pip install 'model-forge-credentials[team]'"


def reserved_provider(team: str) -> str:
    return RESERVED_PREFIX + team


def is_reserved(provider: str | None) -> bool:
    return provider is not None and provider.startswith(RESERVED_PREFIX)
