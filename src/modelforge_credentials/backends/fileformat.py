"""The encrypted credentials file format, version 1. No file I/O here.

Layout (all integers big-endian)::

    magic        8 bytes   b"\\x89MFCRED\\n"
    version      u16       1
    header_len   u32       length of the header map (at most 64 KiB)
    header       msgpack map:
                   protection   "passphrase" | "keyfile"
                   kdf          {"name": "argon2id", "memory_kib", "iterations", "lanes"}
                                | {"name": "scrypt", "n", "r", "p"}
                                | {"name": "keyfile"}
                   salt         16 bytes
                   wrap_nonce   12 bytes
                   wrapped_key  AES-256-GCM(KEK, data key), 48 bytes
                   nonce        12 bytes, the body's nonce (new on every write)
    digest       32 bytes  SHA-256 of everything above
    body         AES-256-GCM(data key, msgpack {provider: {key: value}}),
                 associated data = everything above, digest included

The key-encryption key (KEK) is derived from the passphrase with the KDF, or
is the 32 random bytes of the key file. It wraps a random data key, so a
passphrase change re-wraps 32 bytes and the body key never changes.

Why a digest beside the authenticated encryption: a failed unwrap alone
cannot tell a wrong passphrase from a damaged header. With the digest
intact, an unwrap failure means a wrong passphrase or key file; a digest
mismatch means damage.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped]
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..errors import (
    CredentialBadPassphraseError,
    CredentialCorruptedError,
    CredentialFormatError,
)

MAGIC = b"\x89MFCRED\n"
VERSION = 1
_PREFIX = struct.Struct(">8sHI")
DIGEST_SIZE = 32
MAX_HEADER_SIZE = 65_536
KEY_SIZE = 32
SALT_SIZE = 16
NONCE_SIZE = 12

PASSPHRASE = "passphrase"
KEYFILE = "keyfile"

# Upper bounds for parameters read from a file: a crafted header must not
# make us allocate gigabytes or spin for minutes before the unwrap fails.
MAX_ARGON2_MEMORY_KIB = 1024 * 1024
MAX_ARGON2_ITERATIONS = 16
MAX_ARGON2_LANES = 16
MAX_SCRYPT_N = 2**20
MAX_SCRYPT_R = 16
MAX_SCRYPT_P = 4


@dataclass(frozen=True, slots=True)
class KdfParams:
    """How a passphrase becomes a key-encryption key.

    The default is Argon2id with RFC 9106's second recommended setting
    (64 MiB, 3 passes, 4 lanes). Tests pass cheaper parameters explicitly.
    """

    name: str = "argon2id"
    memory_kib: int = 65_536
    iterations: int = 3
    lanes: int = 4
    n: int = 2**17
    r: int = 8
    p: int = 1

    @classmethod
    def scrypt(cls, n: int = 2**17, r: int = 8, p: int = 1) -> KdfParams:
        return cls(name="scrypt", n=n, r=r, p=p)

    def to_header(self) -> dict[str, Any]:
        if self.name == "argon2id":
            return {
                "name": "argon2id",
                "memory_kib": self.memory_kib,
                "iterations": self.iterations,
                "lanes": self.lanes,
            }
        if self.name == "scrypt":
            return {"name": "scrypt", "n": self.n, "r": self.r, "p": self.p}
        return {"name": KEYFILE}

    @classmethod
    def from_header(cls, kdf: object) -> KdfParams:
        if not isinstance(kdf, dict) or not isinstance(kdf.get("name"), str):
            raise CredentialCorruptedError("the file's KDF description is malformed")
        name = kdf["name"]
        if name == KEYFILE:
            return cls(name=KEYFILE)
        if name == "argon2id":
            params = cls(
                name=name,
                memory_kib=_bounded(kdf, "memory_kib", 8, MAX_ARGON2_MEMORY_KIB),
                iterations=_bounded(kdf, "iterations", 1, MAX_ARGON2_ITERATIONS),
                lanes=_bounded(kdf, "lanes", 1, MAX_ARGON2_LANES),
            )
            if params.memory_kib < 8 * params.lanes:
                raise CredentialCorruptedError("the file's Argon2id memory is below 8 KiB per lane")
            return params
        if name == "scrypt":
            n = _bounded(kdf, "n", 2, MAX_SCRYPT_N)
            if n & (n - 1):
                raise CredentialCorruptedError("the file's scrypt n is not a power of two")
            return cls(
                name=name,
                n=n,
                r=_bounded(kdf, "r", 1, MAX_SCRYPT_R),
                p=_bounded(kdf, "p", 1, MAX_SCRYPT_P),
            )
        raise CredentialFormatError(
            f"the file uses the KDF {name!r}, which this version does not know; "
            "upgrade model-forge-credentials"
        )

    def derive(self, passphrase: bytes, salt: bytes) -> bytes:
        if self.name == "argon2id":
            return Argon2id(
                salt=salt,
                length=KEY_SIZE,
                iterations=self.iterations,
                lanes=self.lanes,
                memory_cost=self.memory_kib,
            ).derive(passphrase)
        if self.name == "scrypt":
            return Scrypt(salt=salt, length=KEY_SIZE, n=self.n, r=self.r, p=self.p).derive(
                passphrase
            )
        raise ValueError("a key-file store has no passphrase KDF")


def _bounded(kdf: dict[str, Any], field: str, low: int, high: int) -> int:
    value = kdf.get(field)
    if type(value) is not int or not low <= value <= high:
        raise CredentialCorruptedError(
            f"the file's KDF parameter {field} is missing or outside {low}..{high}"
        )
    return value


@dataclass(frozen=True, slots=True)
class Envelope:
    """The unencrypted part of a file: how to get at the data key."""

    protection: str
    kdf: KdfParams
    salt: bytes
    wrap_nonce: bytes
    wrapped_key: bytes

    @property
    def kek_id(self) -> tuple[str, KdfParams, bytes]:
        """Identifies the KEK: same id, same key, no need to derive again."""
        return (self.protection, self.kdf, self.salt)

    def unwrap(self, kek: bytes) -> bytes:
        try:
            return AESGCM(kek).decrypt(self.wrap_nonce, self.wrapped_key, self._wrap_aad())
        except InvalidTag:
            what = "passphrase" if self.protection == PASSPHRASE else "key file"
            raise CredentialBadPassphraseError(
                f"the {what} does not open this credentials file (the file is intact "
                "and unchanged); retry with the right one"
            ) from None

    def _wrap_aad(self) -> bytes:
        packed: bytes = msgpack.packb([self.protection, self.kdf.to_header(), self.salt])
        return MAGIC + packed

    @classmethod
    def seal(
        cls, protection: str, kdf: KdfParams, salt: bytes, kek: bytes, data_key: bytes
    ) -> Envelope:
        draft = cls(protection, kdf, salt, b"", b"")
        nonce = os.urandom(NONCE_SIZE)
        wrapped = AESGCM(kek).encrypt(nonce, data_key, draft._wrap_aad())
        return cls(protection, kdf, salt, nonce, wrapped)


Credentials = dict[str, dict[str, str]]


def encode(envelope: Envelope, data_key: bytes, credentials: Credentials) -> bytes:
    nonce = os.urandom(NONCE_SIZE)
    header: bytes = msgpack.packb(
        {
            "protection": envelope.protection,
            "kdf": envelope.kdf.to_header(),
            "salt": envelope.salt,
            "wrap_nonce": envelope.wrap_nonce,
            "wrapped_key": envelope.wrapped_key,
            "nonce": nonce,
        },
        use_bin_type=True,
    )
    head = _PREFIX.pack(MAGIC, VERSION, len(header)) + header
    head += hashlib.sha256(head).digest()
    plain: bytes = msgpack.packb(credentials, use_bin_type=True)
    body = AESGCM(data_key).encrypt(nonce, plain, head)
    return head + body


@dataclass(frozen=True, slots=True)
class ParsedFile:
    envelope: Envelope
    nonce: bytes
    head: bytes
    body: bytes

    def decrypt(self, data_key: bytes) -> Credentials:
        try:
            plain = AESGCM(data_key).decrypt(self.nonce, self.body, self.head)
        except InvalidTag:
            raise CredentialCorruptedError(
                "the credentials file's contents fail authentication (damaged or altered)"
            ) from None
        return _check_credentials(plain)


def parse(blob: bytes) -> ParsedFile:
    """Split a file into envelope and body, checking everything but the keys."""
    if len(blob) < _PREFIX.size or not blob.startswith(MAGIC):
        raise CredentialCorruptedError("this is not a model-forge credentials file (bad magic)")
    _, version, header_len = _PREFIX.unpack_from(blob)
    if version != VERSION:
        raise CredentialFormatError(
            f"the credentials file has format version {version}; this version reads "
            f"only {VERSION}: upgrade model-forge-credentials"
        )
    if header_len > MAX_HEADER_SIZE:
        raise CredentialCorruptedError("the credentials file's header length is implausible")
    head_end = _PREFIX.size + header_len + DIGEST_SIZE
    if len(blob) < head_end + 16:
        raise CredentialCorruptedError("the credentials file is truncated")
    head = blob[:head_end]
    if hashlib.sha256(head[:-DIGEST_SIZE]).digest() != head[-DIGEST_SIZE:]:
        raise CredentialCorruptedError("the credentials file's header is damaged (digest mismatch)")
    try:
        header = msgpack.unpackb(head[_PREFIX.size : -DIGEST_SIZE], raw=False)
    except Exception as err:
        raise CredentialCorruptedError("the credentials file's header is not readable") from err
    if not isinstance(header, dict):
        raise CredentialCorruptedError("the credentials file's header is not a map")
    protection = header.get("protection")
    if protection not in (PASSPHRASE, KEYFILE):
        raise CredentialFormatError(
            f"the credentials file uses protection {protection!r}, unknown to this version"
        )
    kdf = KdfParams.from_header(header.get("kdf"))
    if (kdf.name == KEYFILE) != (protection == KEYFILE):
        raise CredentialCorruptedError("the credentials file's protection and KDF disagree")
    fields = {}
    for name, size in (
        ("salt", SALT_SIZE),
        ("wrap_nonce", NONCE_SIZE),
        ("wrapped_key", KEY_SIZE + 16),
        ("nonce", NONCE_SIZE),
    ):
        value = header.get(name)
        if not isinstance(value, bytes) or len(value) != size:
            raise CredentialCorruptedError(f"the credentials file's {name} is malformed")
        fields[name] = value
    envelope = Envelope(
        protection, kdf, fields["salt"], fields["wrap_nonce"], fields["wrapped_key"]
    )
    return ParsedFile(envelope, fields["nonce"], head, blob[head_end:])


def _check_credentials(plain: bytes) -> Credentials:
    try:
        data = msgpack.unpackb(plain, raw=False)
    except Exception as err:
        raise CredentialCorruptedError("the decrypted credentials are not readable") from err
    if not isinstance(data, dict) or not all(
        isinstance(p, str)
        and isinstance(keys, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in keys.items())
        for p, keys in data.items()
    ):
        raise CredentialCorruptedError("the decrypted credentials have an unexpected shape")
    return data
