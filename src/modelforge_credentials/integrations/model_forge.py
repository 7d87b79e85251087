"""model-forge reads and writes its secrets through the credential agent.

model-forge-llm 2.3 keeps all of its secret I/O in three functions of
``modelforge/auth.py``: ``get_auth_data(provider_name) -> dict``,
``save_auth_data(provider_name, auth_data) -> None`` and
``clear_auth_data(provider_name) -> None``. Its strategies call them through
the module's globals, so replacing the three attributes reroutes every read
and write (``auth login``, the device-flow refresh, ``auth logout``).

:func:`install` does that with an adapter of the same signatures and return
shapes (JSON types kept: ``expires_in`` stays an int), storing each key as
one credential (:mod:`..auth_data`). It runs in model-forge's process: armed
by the ``.pth`` hook that ``modelforge-agent integrate model-forge`` writes,
or called by a program that embeds model-forge::

    from modelforge_credentials.integrations import model_forge
    model_forge.install()

What it does with the config file: reads from it only when the store has
nothing for a provider (a config not migrated yet), and removes a provider's
plain-text ``auth_data`` from it once the store holds the new value. It
never writes a secret to it.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .. import auth_data as layout
from ..storage import CredentialStorage

MODULE = "modelforge.auth"
SUPPORTED = "model-forge-llm 2.3"
# name -> the parameters model-forge 2.3 gives it; the adapter has the same.
FUNCTIONS: dict[str, tuple[str, ...]] = {
    "get_auth_data": ("provider_name",),
    "save_auth_data": ("provider_name", "auth_data"),
    "clear_auth_data": ("provider_name",),
}

log = logging.getLogger("modelforge_credentials.integrations.model_forge")


class ModelForgeIncompatibleError(ImportError):
    """This model-forge does not keep its secret I/O in the three functions.

    Raised when the adapter is installed on a ``modelforge.auth`` without
    ``get_auth_data``, ``save_auth_data`` and ``clear_auth_data`` of the
    expected signatures. model-forge is stopped rather than left to write
    secrets to its config in plain text: remove the integration
    (``modelforge-agent integrate model-forge --remove``) or install a
    supported model-forge-llm.
    """


def check_module(module: ModuleType) -> None:
    """Raise :class:`ModelForgeIncompatibleError` unless ``module`` has the seam."""
    problems = []
    for name, params in FUNCTIONS.items():
        function = getattr(module, name, None)
        code = getattr(getattr(function, "__func__", function), "__code__", None)
        if code is None:
            problems.append(f"no function {name}()")
            continue
        have = code.co_varnames[: code.co_argcount]
        if isinstance(getattr(function, "__self__", None), ModelForgeAdapter):
            have = have[1:]  # our own bound method: already installed
        if tuple(have) != params:
            problems.append(f"{name}({', '.join(have)}) instead of {name}({', '.join(params)})")
    if problems:
        raise ModelForgeIncompatibleError(
            f"{module.__name__} has " + "; ".join(problems) + ". The model-forge-credentials "
            f"integration supports {SUPPORTED}, whose secrets it routes through these "
            "functions; this model-forge was stopped so that it cannot write secrets to its "
            "config file in plain text. Run `modelforge-agent integrate model-forge --remove` "
            f"to use it without the agent, or install {SUPPORTED}.x"
        )


class ModelForgeAdapter:
    """The three functions, over a :class:`CredentialStorage`."""

    def __init__(self, module: ModuleType, storage: CredentialStorage | None = None) -> None:
        self.module = module
        self.originals: dict[str, Callable[..., Any]] = {
            name: getattr(module, name) for name in FUNCTIONS
        }
        self._storage = storage

    def __repr__(self) -> str:
        return f"ModelForgeAdapter({self.module.__name__!r}, {self._storage!r})"

    @property
    def storage(self) -> CredentialStorage:
        if self._storage is None:
            from ..manager import default_storage

            self._storage = default_storage()
        return self._storage

    def get_auth_data(self, provider_name: str) -> dict[str, Any]:
        stored = layout.read_auth_data(self.storage, provider_name)
        if stored:
            return stored
        # Not migrated yet: the config's copy, read-only. The next save
        # moves it into the store.
        return dict(self.originals["get_auth_data"](provider_name))

    def save_auth_data(self, provider_name: str, auth_data: dict[str, Any]) -> None:
        layout.write_auth_data(self.storage, provider_name, dict(auth_data))
        self._drop_config_copy(provider_name)
        log.info("saved auth data for %s in the credential store", provider_name)

    def clear_auth_data(self, provider_name: str) -> None:
        layout.clear_auth_data(self.storage, provider_name)
        self._drop_config_copy(provider_name)

    def _drop_config_copy(self, provider_name: str) -> None:
        if self.originals["get_auth_data"](provider_name):
            self.originals["clear_auth_data"](provider_name)


def installed_adapter(module: ModuleType) -> ModelForgeAdapter | None:
    adapter = getattr(module.get_auth_data, "__self__", None)
    return adapter if isinstance(adapter, ModelForgeAdapter) else None


def install(
    module: ModuleType | None = None, *, storage: CredentialStorage | None = None
) -> ModelForgeAdapter:
    """Route ``modelforge.auth``'s secret I/O through ``storage`` (the agent).

    ``module`` defaults to ``modelforge.auth`` (imported if needed). Calling
    it again returns the adapter already installed. Raises
    :class:`ModelForgeIncompatibleError` on a model-forge without the seam.
    """
    if module is None:
        module = importlib.import_module(MODULE)
    check_module(module)
    adapter = installed_adapter(module)
    if adapter is not None:
        return adapter
    adapter = ModelForgeAdapter(module, storage)
    for name in FUNCTIONS:
        setattr(module, name, getattr(adapter, name))
    return adapter


def uninstall(module: ModuleType | None = None) -> bool:
    """Put model-forge's own functions back; ``True`` if the adapter was there."""
    if module is None:
        module = importlib.import_module(MODULE)
    adapter = installed_adapter(module)
    if adapter is None:
        return False
    for name, function in adapter.originals.items():
        setattr(module, name, function)
    return True
