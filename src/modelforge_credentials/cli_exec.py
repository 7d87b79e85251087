"""``exec -- CMD``: run a command with secrets in its environment only.

Only what the user names is injected (``-p``, ``-e``, ``--env-file``), or
every stored provider with ``--all``: least privilege, as ``op run`` and
aws-vault. Every secret is resolved before the command starts, so a missing
one runs nothing.
"""

from __future__ import annotations

import os

from .cli import EXIT_UNAVAILABLE
from .errors import CredentialValidationError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .cli import Cli
    from .client.sync import AgentClient
    from .secret_env import Binding


def run_with_secrets(cli: Cli) -> int:
    from . import refs, secret_env

    argv = list(cli.args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise CredentialValidationError(
            "exec needs a command: modelforge-agent exec -- CMD [ARGS...]"
        )
    overrides = [secret_env.parse_env_option(option) for option in cli.args.env]
    # Read before the agent is asked anything: a bad file is exit 2, nothing run.
    plain, from_files = secret_env.env_files_bindings(cli.args.env_file)
    if not (cli.args.provider or overrides or cli.args.env_file or cli.args.all):
        raise CredentialValidationError(
            "exec injects only the secrets you name; nothing was run. Name them: "
            "-p PROVIDER (its api_key or access_token, as model-forge and the SDKs read "
            "them), -e VAR=PROVIDER/KEY, --env-file FILE, or pass --all to inject every "
            "stored provider"
        )
    with cli.client() as client:
        values = _named_values(cli, client, overrides)
        # Every reference in the files must exist: all unknown ones named at once.
        resolved = cli._with_unlock(client, lambda: refs.resolve_all(from_files, client.retrieve))
    env = dict(os.environ)
    env.update(plain)
    env.update(resolved)
    env.update(values)  # -p and -e win over a file, as on op run's command line
    if cli.args.mask:
        return secret_env.run_masked(argv, env, [*values.values(), *resolved.values()])
    cli.stdout.flush()
    cli.stderr.flush()
    secret_env.exec_replace(argv, env)
    return EXIT_UNAVAILABLE  # pragma: no cover - exec does not return


def _named_values(cli: Cli, client: AgentClient, overrides: list[Binding]) -> dict[str, str]:
    """The variables ``-p``, ``-e`` and ``--all`` ask for, with their values."""
    from . import secret_env

    if not (cli.args.provider or overrides or cli.args.all):
        return {}
    names = cli._with_unlock(client, lambda: client.list_keys())
    providers = None if cli.args.all else cli.args.provider
    bindings = secret_env.plan(names, providers, overrides, skip_missing=cli.args.skip_missing)
    return secret_env.resolve(bindings, client.retrieve, skip_missing=cli.args.skip_missing)
