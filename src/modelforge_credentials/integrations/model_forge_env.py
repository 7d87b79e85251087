"""Finding model-forge's Python environment and arming the adapter in it.

``modelforge-agent integrate model-forge`` runs here, in our process; it never
imports model-forge. It asks model-forge's interpreter (found from the
``modelforge`` executable's ``#!`` line, or given with ``--python``) where
model-forge lives, checks without importing it that ``modelforge/auth.py``
has the three functions the adapter replaces and that this package is
importable there too, then writes one ``.pth`` file beside model-forge.
``--remove`` deletes that file, the only thing the integration adds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import (
    CredentialNotFoundError,
    CredentialStorageUnavailableError,
    CredentialValidationError,
)
from ..files import write_atomic
from .model_forge import FUNCTIONS, SUPPORTED

PTH_NAME = "modelforge_credentials_model_forge.pth"
# site.py executes a .pth line that starts with "import", at every start of
# that interpreter: so the line imports nothing (compiling it costs ~50 us).
# Its finder answers only for modelforge.auth, and only then imports this
# package's hook, which takes over. Without this package (uninstalled but
# not --remove'd) model-forge runs as it would without the integration.
# Idempotent: some interpreters process a site directory twice.
BOOTSTRAP = """\
class ModelForgeCredentialsHook:
 @classmethod
 def find_spec(cls, name, path=None, target=None):
  if name != 'modelforge.auth':
   return None
  import sys
  sys.meta_path.remove(cls)
  try:
   from modelforge_credentials.integrations.model_forge_hook import arm
  except ImportError:
   return None
  return arm().find_spec(name, path, target)
for f in sys.meta_path:
 if getattr(f, '__name__', '') == 'ModelForgeCredentialsHook':
  break
else:
 sys.meta_path.insert(0, ModelForgeCredentialsHook)"""
PTH_LINE = f"import sys; exec({BOOTSTRAP!r})\n"

# Runs in model-forge's interpreter: finds, never imports, model-forge.
PROBE = r"""
import ast, importlib.util, json, os, site, sys, sysconfig
from importlib import metadata

def version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None

def functions(path):
    try:
        tree = ast.parse(open(path, "rb").read())
    except (OSError, SyntaxError, ValueError):
        return None
    return {node.name: [a.arg for a in node.args.posonlyargs + node.args.args]
            for node in tree.body if isinstance(node, ast.FunctionDef)}

site_dirs = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
if site.ENABLE_USER_SITE:
    site_dirs.append(site.getusersitepackages())
out = {"python": sys.executable, "purelib": sysconfig.get_paths()["purelib"],
       "site_dirs": site_dirs, "model_forge": None, "ours": None,
       "model_forge_version": version("model-forge-llm")}
spec = importlib.util.find_spec("modelforge")
if spec is not None and spec.submodule_search_locations:
    package = list(spec.submodule_search_locations)[0]
    auth = os.path.join(package, "auth.py")
    out["model_forge"] = {"package": package, "auth": auth, "functions": functions(auth)}
if importlib.util.find_spec("modelforge_credentials") is not None:
    ours = importlib.util.find_spec("modelforge_credentials.integrations.model_forge_hook")
    out["ours"] = ours.origin if ours is not None else None
json.dump(out, sys.stdout)
"""


@dataclass(frozen=True)
class ModelForgeEnvironment:
    """What the probe found in one interpreter."""

    python: str
    site_dirs: tuple[Path, ...]
    package: Path | None
    auth: str | None
    functions: dict[str, list[str]] | None
    version: str | None
    ours: str | None

    @property
    def pth(self) -> Path:
        """Beside model-forge when that is a site directory (a venv, pipx,
        ``--user``); an editable model-forge lives elsewhere: then the
        interpreter's first site directory."""
        if self.package is not None:
            parent = Path(os.path.realpath(self.package.parent))
            if parent in self.site_dirs:
                return parent / PTH_NAME
        return self.site_dirs[0] / PTH_NAME

    def installed(self) -> bool:
        try:
            return self.pth.read_text(encoding="utf-8") == PTH_LINE
        except OSError:
            return False


def find_python(python: str | None) -> str:
    """``--python``, else the interpreter of the ``modelforge`` on ``PATH`` (or
    in this interpreter's own ``bin``)."""
    if python:
        resolved = shutil.which(python)
        if resolved is None:
            raise CredentialNotFoundError(
                f"no Python interpreter at {python}; pass the `python` of the environment "
                "where model-forge-llm is installed"
            )
        return resolved
    # On PATH, else beside our own interpreter (both in one venv, not activated).
    executable = shutil.which("modelforge") or shutil.which(
        "modelforge", path=os.path.dirname(sys.executable)
    )
    if executable is None:
        raise CredentialNotFoundError(
            "no `modelforge` executable on PATH; install model-forge-llm, or pass "
            "--python PATH with the interpreter of its environment"
        )
    interpreter = _shebang_interpreter(Path(executable))
    if interpreter is None:
        raise CredentialNotFoundError(
            f"cannot tell which Python runs {executable}; pass --python PATH with the "
            "interpreter of model-forge's environment"
        )
    return interpreter


def _shebang_interpreter(script: Path) -> str | None:
    try:
        with script.open("rb") as handle:
            head = handle.read(4096).decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    if not head or not head[0].startswith("#!"):
        return None
    words = head[0][2:].split()
    if words and words[0] == "/bin/sh" and len(head) > 1 and head[1].startswith("'''exec'"):
        # pip's form for interpreter paths too long for a #! line.
        words = head[1].removeprefix("'''exec'").split('"')[1:2] or head[1].split()[1:2]
    elif words and os.path.basename(words[0]) == "env":
        words = [shutil.which(words[1]) or words[1]] if len(words) > 1 else []
    return words[0] if words and os.access(words[0], os.X_OK) else None


def probe(python: str) -> ModelForgeEnvironment:
    """Ask ``python`` where model-forge and this package are; import neither."""
    try:
        result = subprocess.run(
            [python, "-c", PROBE], capture_output=True, text=True, timeout=60, check=False
        )
        found = json.loads(result.stdout) if result.returncode == 0 else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        found = None
    if not isinstance(found, dict):
        raise CredentialNotFoundError(
            f"{python} could not be asked where model-forge is installed; pass --python "
            "PATH with the interpreter of model-forge's environment"
        )
    dirs = [found["purelib"], *found.get("site_dirs", [])]
    site_dirs = tuple(dict.fromkeys(Path(os.path.realpath(d)) for d in dirs))
    model_forge = found.get("model_forge") or {}
    return ModelForgeEnvironment(
        python=found.get("python") or python,
        site_dirs=site_dirs,
        package=Path(model_forge["package"]) if model_forge else None,
        auth=model_forge.get("auth"),
        functions=model_forge.get("functions"),
        version=found.get("model_forge_version"),
        ours=found.get("ours"),
    )


def require_model_forge(env: ModelForgeEnvironment) -> None:
    """model-forge is there and keeps its secret I/O in the adapter's seam."""
    if env.package is None:
        raise CredentialNotFoundError(
            f"model-forge-llm is not installed for {env.python}; pass --python PATH with the "
            "interpreter of the environment where it is"
        )
    which = f"model-forge-llm {env.version}" if env.version else "this model-forge"
    functions = env.functions if isinstance(env.functions, dict) else {}
    missing = [
        f"{name}({', '.join(params)})"
        for name, params in FUNCTIONS.items()
        if functions.get(name) != list(params)
    ]
    if missing:
        raise CredentialValidationError(
            f"{which} does not define " + ", ".join(missing) + f" in {env.auth}: its secrets "
            f"cannot be routed through the agent (the integration supports {SUPPORTED}). "
            f"Nothing was changed. Install {SUPPORTED}.x, or keep using `modelforge-agent exec`"
        )


def require_ours(env: ModelForgeEnvironment) -> None:
    """The adapter runs in model-forge's process: this package must be there."""
    if env.ours is not None:
        return
    if "/pipx/venvs/" in env.python:
        how = "pipx inject model-forge-llm model-forge-credentials"
    else:
        how = f"{env.python} -m pip install model-forge-credentials"
    raise CredentialNotFoundError(
        f"model-forge-credentials is not installed beside model-forge ({env.python}); the "
        f"adapter runs inside model-forge's own process. Install it there: `{how}`, then "
        "re-run `modelforge-agent integrate model-forge`"
    )


def install_hook(env: ModelForgeEnvironment) -> bool:
    """Write the ``.pth``; ``False`` if it was already there."""
    if env.installed():
        return False
    try:
        write_atomic(env.pth, PTH_LINE.encode("utf-8"), mode=0o644)
    except CredentialStorageUnavailableError as err:
        raise CredentialStorageUnavailableError(
            f"cannot write {env.pth}: {_cause(err)}. Run this as the user who installed "
            "model-forge there, or install model-forge-llm in a virtual environment of "
            "your own (or with pipx)"
        ) from err
    return True


def remove_hook(env: ModelForgeEnvironment) -> list[Path]:
    """Delete the ``.pth`` from every site directory; the files removed.

    Works without model-forge (already uninstalled) and on a model-forge the
    adapter refuses, so the way back is always open.
    """
    removed = []
    for directory in env.site_dirs:
        path = directory / PTH_NAME
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as err:
            raise CredentialStorageUnavailableError(
                f"cannot remove {path}: {err.strerror}. Run this as the user who installed "
                "model-forge there"
            ) from err
        removed.append(path)
    return removed


def _cause(err: BaseException) -> str:
    cause = err.__cause__
    return cause.strerror if isinstance(cause, OSError) and cause.strerror else "not writable"
