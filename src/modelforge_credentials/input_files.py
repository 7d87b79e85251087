"""The small files secret references come in (templates, dotenv files), read whole.

Each is a small config held in memory with its values, so each kind has a
size cap, and a FIFO or device is refused rather than read.
"""

from __future__ import annotations

from .errors import (
    CredentialStorageUnavailableError,
    CredentialTooLargeError,
    CredentialValidationError,
)

# os and pathlib stay out of the import: the parser loads the reference commands for --help.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import os

#: Size caps of the files read here: a template or dotenv file is a small
#: config, and the whole of it is held in memory with its values.
MAX_TEMPLATE_BYTES = 1 << 20
MAX_ENV_FILE_BYTES = 1 << 20


class InputTooLargeError(CredentialTooLargeError):
    """A template or dotenv file is over its cap (MAX_TEMPLATE_BYTES,
    MAX_ENV_FILE_BYTES): these are small config files, read whole."""


def read_capped(path: str | os.PathLike[str], limit: int, what: str) -> bytes:
    """The bytes of the regular file ``path``, refusing more than ``limit``."""
    from pathlib import Path

    from .files import open_regular

    try:
        with open_regular(Path(path)) as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise CredentialValidationError(f"{what} {path} does not exist; check the path") from None
    except OSError as err:
        raise CredentialStorageUnavailableError(
            f"cannot read {what} {path}: {err.strerror or err}"
        ) from err
    if len(data) > limit:
        raise InputTooLargeError(
            f"{what} {path} is over the limit of {limit:,} bytes; nothing was read from it"
        )
    return data
