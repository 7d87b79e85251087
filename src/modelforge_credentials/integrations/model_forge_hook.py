"""Installs the model-forge adapter as model-forge imports ``modelforge.auth``.

The one-line ``.pth`` that ``modelforge-agent integrate model-forge`` writes
into model-forge's environment (:data:`.model_forge_env.PTH_LINE`) imports
nothing at interpreter start: its finder waits for ``modelforge.auth``, then
imports this module and hands over to :class:`AuthModuleFinder`. The normal
import of ``modelforge.auth`` runs first, and the adapter is installed on the
fresh module before anyone can call it.
"""

from __future__ import annotations

import sys
from importlib.abc import Loader

TARGET = "modelforge.auth"

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType


class AuthModuleFinder:
    """Finds ``modelforge.auth`` the normal way, then wraps its loader."""

    @classmethod
    def find_spec(
        cls, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is cls:
                continue
            find = getattr(finder, "find_spec", None)
            spec: ModuleSpec | None = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        if isinstance(spec.loader, Loader):
            spec.loader = AdapterLoader(spec.loader)
        return spec


class AdapterLoader(Loader):
    """Runs the real loader, then installs the adapter on the module."""

    def __init__(self, loader: Loader) -> None:
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        from .model_forge import install

        install(module)

    def __getattr__(self, name: str) -> object:
        # get_source, get_resource_reader, ...: the real loader's.
        return getattr(self.loader, name)


def arm() -> type[AuthModuleFinder]:
    """Watch for ``modelforge.auth`` (idempotent); the finder that does."""
    if AuthModuleFinder not in sys.meta_path:
        sys.meta_path.insert(0, AuthModuleFinder)
    return AuthModuleFinder
