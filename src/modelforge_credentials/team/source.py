"""The one module that speaks to OpenBao / Vault (through hvac).

Imported by the agent only once a team is configured, so hvac stays an
optional extra. Every hvac and requests error is translated here, at one
point, into :class:`TeamServerError` (with a ``state`` for status and doctor)
or :class:`TeamConflictError`; no message carries a token or a value.
Blocking: the agent runs these calls on its team thread, never on its loop.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import hvac  # type: ignore[import-untyped]
import requests

from ..errors import CredentialStorageUnavailableError, CredentialValidationError
from ..validation import MAX_VALUE_BYTES, validate_name
from .config import TeamConfig

log = logging.getLogger("modelforge_credentials.agent")
T = TypeVar("T")
#: Seconds per server request: a blackholed server must not hold the team thread.
REQUEST_TIMEOUT = 10.0


class TeamServerError(CredentialStorageUnavailableError):
    """The team's server could not answer: ``state`` says why (unreachable,
    sealed, tls, needs_login, error); the message says what to do."""

    def __init__(self, message: str, state: str) -> None:
        super().__init__(message)
        self.state = state


class TeamConflictError(CredentialValidationError):
    """A team write was refused: the server holds a newer version than the one
    this agent last saw. Nothing was written; refresh, check, and set again."""


@dataclass(frozen=True)
class Secret:
    """One provider's KV v2 secret at one version: its fields are the keys."""

    version: int
    fields: dict[str, str]


class TeamSource:
    """A team's server. ``urls`` are tried in order (the nodes of a cluster);
    the last one that answered is tried first next time."""

    def __init__(self, config: TeamConfig) -> None:
        self.config = config
        self.urls = [u.strip() for u in config.url.split(",") if u.strip()]

    # -- the server ---------------------------------------------------------------------

    def _client(self, url: str, token: str | None) -> Any:
        verify: bool | str = self.config.ca_cert or True
        return hvac.Client(url=url, token=token, verify=verify, timeout=REQUEST_TIMEOUT)

    def _call(self, token: str | None, action: Callable[[Any], T]) -> T:
        """``action(client)`` on the first node that answers."""
        last: TeamServerError | None = None
        for url in list(self.urls):
            try:
                with self._translated(url):
                    result = action(self._client(url, token))
            except TeamServerError as err:
                if err.state not in ("unreachable", "sealed", "standby"):
                    raise
                last = err
                continue
            if url != self.urls[0]:
                self.urls.remove(url)
                self.urls.insert(0, url)
            return result
        assert last is not None
        raise last

    @contextlib.contextmanager
    def _translated(self, url: str) -> Iterator[None]:
        name = self.config.name
        try:
            yield
        except hvac.exceptions.Forbidden:
            raise TeamServerError(
                f"team {name}: the server refused the login token (403: expired, revoked or "
                f"without access to {self.config.mount}/{self.config.path_prefix}); run "
                f"`modelforge-agent team login {name}`",
                "needs_login",
            ) from None
        except hvac.exceptions.VaultDown:
            raise TeamServerError(
                f"team {name}: {url} is sealed; unseal it (`bao operator unseal`) or ask "
                "the team's operator",
                "sealed",
            ) from None
        except hvac.exceptions.VaultError as err:
            raise TeamServerError(
                f"team {name}: {url} answered {type(err).__name__} "
                f"({_first_line(err)}); check the team's settings (`modelforge-agent team "
                "status`) and the server's log",
                "error",
            ) from None
        except requests.exceptions.SSLError:
            raise TeamServerError(
                f"team {name}: the TLS certificate of {url} could not be verified; pass the "
                f"server's CA with `modelforge-agent team add {name} --url {self.config.url} "
                "--ca-cert FILE`",
                "tls",
            ) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout):
            raise TeamServerError(
                f"team {name}: {url} does not answer; cached secrets are served for at most "
                f"{self.config.max_stale:g} s after the last refresh. Check the server and "
                f"the network, then `modelforge-agent team refresh {name}`",
                "unreachable",
            ) from None

    # -- login and token ------------------------------------------------------------------

    def login(self, method: str, secret: str, login_name: str | None) -> str:
        """A client token for ``method``; ``secret`` is the token, password or secret-id."""
        if method == "token":
            self._call(secret, lambda c: c.auth.token.lookup_self())
            return secret

        def exchange(client: Any) -> str:
            if method == "userpass":
                result = client.auth.userpass.login(username=login_name, password=secret)
            else:
                result = client.auth.approle.login(role_id=login_name, secret_id=secret)
            return str(result["auth"]["client_token"])

        try:
            return self._call(None, exchange)
        except TeamServerError as err:
            if err.state != "error":
                raise
            raise TeamServerError(
                f"team {self.config.name}: the {method} login was refused (wrong "
                f"{'password' if method == 'userpass' else 'role-id or secret-id'}?); run "
                f"`modelforge-agent team login {self.config.name} --method {method}` again",
                "needs_login",
            ) from None

    def token_info(self, token: str) -> tuple[float | None, float, bool]:
        """(seconds left, None for a token that never expires; its TTL when
        created; renewable)."""
        data = self._call(token, lambda c: c.auth.token.lookup_self())["data"]
        ttl = data.get("ttl") or 0
        created = float(data.get("creation_ttl") or 0)
        return (float(ttl) if ttl else None), created, bool(data.get("renewable"))

    def renew(self, token: str) -> float | None:
        auth = self._call(token, lambda c: c.auth.token.renew_self())["auth"]
        ttl = auth.get("lease_duration") or 0
        return float(ttl) if ttl else None

    # -- KV version 2 ------------------------------------------------------------------------

    def fetch(self, token: str, known: dict[str, Secret]) -> dict[str, Secret]:
        """Every provider's current secret; only versions not in ``known`` are read.

        A provider whose current version is deleted or destroyed is left out.
        """
        mount, prefix = self.config.mount, self.config.path_prefix

        def names(client: Any) -> list[str]:
            try:
                listed = client.secrets.kv.v2.list_secrets(path=prefix, mount_point=mount)
            except hvac.exceptions.InvalidPath:
                return []  # nothing under the prefix yet
            return [str(k) for k in listed["data"]["keys"]]

        secrets: dict[str, Secret] = {}
        for provider in names_checked(self._call(token, names)):
            version = self._current(token, provider)
            if version is None:
                continue
            old = known.get(provider)
            if old is not None and old.version == version:
                secrets[provider] = old
                continue
            fields = self._read(token, provider, version)
            if fields is not None:
                secrets[provider] = Secret(version, fields)
        return secrets

    def _current(self, token: str, provider: str) -> int | None:
        """The current version, None when it is deleted, destroyed or absent."""
        path = f"{self.config.path_prefix}/{provider}"

        def metadata(client: Any) -> dict[str, Any] | None:
            try:
                return dict(
                    client.secrets.kv.v2.read_secret_metadata(
                        path=path, mount_point=self.config.mount
                    )["data"]
                )
            except hvac.exceptions.InvalidPath:
                return None

        data = self._call(token, metadata)
        if data is None:
            return None
        version = int(data.get("current_version") or 0)
        state = (data.get("versions") or {}).get(str(version)) or {}
        if not version or state.get("destroyed") or state.get("deletion_time"):
            return None
        return version

    def _read(self, token: str, provider: str, version: int) -> dict[str, str] | None:
        path = f"{self.config.path_prefix}/{provider}"

        def read(client: Any) -> dict[str, Any] | None:
            try:
                return dict(
                    client.secrets.kv.v2.read_secret_version(
                        path=path,
                        version=version,
                        mount_point=self.config.mount,
                        raise_on_deleted_version=True,
                    )["data"]
                )
            except hvac.exceptions.InvalidPath:
                return None  # deleted between the metadata read and this one

        data = self._call(token, read)
        if data is None:
            return None
        return fields_checked(provider, data.get("data") or {})

    def write(self, token: str, provider: str, fields: dict[str, str], seen: int) -> int:
        """Write ``fields`` as the next version if the current one is ``seen``
        (0: the secret must not exist); the new version. Raises TeamConflictError."""
        path = f"{self.config.path_prefix}/{provider}"

        def put(client: Any) -> int:
            result = client.secrets.kv.v2.create_or_update_secret(
                path=path, secret=fields, cas=seen, mount_point=self.config.mount
            )
            return int(result["data"]["version"])

        try:
            return self._call(token, put)
        except TeamServerError as err:
            if err.state != "error":
                raise
            newer = self._current(token, provider)
            if newer == seen:
                raise
        where = self.config.kv_path(provider)
        raise TeamConflictError(
            f"team {self.config.name}: {where} is at version {newer} on the server, newer "
            f"than version {seen or 'none'} this agent last saw; nothing was written and "
            f"nothing changed. Run `modelforge-agent team refresh {self.config.name}`, "
            "check the value with `modelforge-agent get`, then set it again"
        )


def names_checked(keys: list[str]) -> list[str]:
    """Provider names from a KV list: folders and names the agent cannot hold skipped."""
    out = []
    for key in keys:
        if key.endswith("/"):
            continue
        try:
            out.append(validate_name("provider", key))
        except CredentialValidationError:
            log.warning("team secret %r skipped: not a valid provider name", key[:80])
    return out


def fields_checked(provider: str, data: dict[str, Any]) -> dict[str, str]:
    """A secret's fields as the agent's keys: strings only, within the limits."""
    fields: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(value, str) or len(value.encode()) > MAX_VALUE_BYTES:
            log.warning("team secret %s: field %r skipped (not text, or too long)", provider, key)
            continue
        try:
            fields[validate_name("key", key)] = value
        except CredentialValidationError:
            log.warning("team secret %s: field skipped (not a valid key name)", provider)
    return fields


def _first_line(err: Exception) -> str:
    """hvac's message without the URL and the server's echo of the request."""
    text = str(err).split(", on ")[0].splitlines()
    return (text[0] if text else type(err).__name__)[:200]
