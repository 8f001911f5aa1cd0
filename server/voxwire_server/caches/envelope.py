"""Cache values at rest: AES-256-GCM under a key the store never sees, bound to the entry's store key.

A sealed value is

    0xC2 0x01 | key id (8 bytes) | nonce (12 bytes) | ciphertext | GCM tag (16 bytes)

The nonce is random per value. The key id is the first 8 bytes of HMAC-SHA-256(key, "voxwire cache
key id"): it tells which key to try without saying anything about the key. The associated data is
the header (magic, version, key id) followed by the entry's store key, so a value copied under
another key (another user's, another tier's) does not authenticate, nor does one whose key id was
rewritten. Retired keys open values but never seal them: rotation is a new current key with the
old one kept among the retired until the entries made under it have expired or been re-sealed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "HEADER_BYTES",
    "KEY_BYTES",
    "NONCE_BYTES",
    "OVERHEAD_BYTES",
    "NotAuthentic",
    "SealError",
    "Sealer",
    "UnknownKey",
    "derive_key",
    "key_id",
]

MAGIC = b"\xc2\x01"  # 0xC2 starts no msgpack value and no codec payload (0xC1); 0x01: this layout
KEY_BYTES = 32
KEY_ID_BYTES = 8
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER_BYTES = len(MAGIC) + KEY_ID_BYTES
OVERHEAD_BYTES = HEADER_BYTES + NONCE_BYTES + TAG_BYTES
"""What sealing adds to a value's length."""

_KEY_ID_LABEL = b"voxwire cache key id"
_DERIVE_INFO = b"voxwire cache value key v1"


class SealError(ValueError):
    """Bytes that do not open to a value; their content is never part of the message."""


class UnknownKey(SealError):
    """Sealed under a key this process does not hold: retired and dropped, or not rolled out here yet."""

    def __init__(self, key_id: bytes) -> None:
        super().__init__(f"sealed under key id {key_id.hex()}, which this server does not hold")
        self.key_id = key_id


class NotAuthentic(SealError):
    """Not a sealed value, truncated, tampered with, or moved from another store key."""


def key_id(key: bytes) -> bytes:
    return hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).digest()[:KEY_ID_BYTES]


def derive_key(secret: bytes) -> bytes:
    """A value key from another secret (HKDF-SHA-256), separate from the HMAC key it is made from."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=_DERIVE_INFO).derive(secret)


def _check(key: bytes) -> None:
    if len(key) != KEY_BYTES:
        raise ValueError(f"a cache encryption key must be {KEY_BYTES} bytes, got {len(key)}")


class Sealer:
    """Seals under the current key; opens under the current or any retired one."""

    __slots__ = ("_current_id", "_current", "_keys")

    def __init__(self, key: bytes, retired: Sequence[bytes] = ()) -> None:
        _check(key)
        for old in retired:
            _check(old)
        self._current_id = key_id(key)
        self._current = AESGCM(key)
        self._keys = {key_id(old): AESGCM(old) for old in retired}
        self._keys[self._current_id] = self._current  # a retired copy of the current key is the current one

    @property
    def key_id(self) -> bytes:
        return self._current_id

    def seal(self, plaintext: bytes, store_key: str) -> bytes:
        header = MAGIC + self._current_id
        nonce = secrets.token_bytes(NONCE_BYTES)
        return header + nonce + self._current.encrypt(nonce, plaintext, header + store_key.encode())

    def open(self, sealed: bytes, store_key: str) -> tuple[bytes, bool]:
        """(plaintext, whether it was sealed under the current key). Raises SealError."""
        if len(sealed) < OVERHEAD_BYTES or not sealed.startswith(MAGIC):
            raise NotAuthentic("not a sealed cache value")
        header = sealed[:HEADER_BYTES]
        found = header[len(MAGIC) :]
        cipher = self._keys.get(found)
        if cipher is None:
            raise UnknownKey(found)
        nonce = sealed[HEADER_BYTES : HEADER_BYTES + NONCE_BYTES]
        try:
            plaintext = cipher.decrypt(
                nonce, sealed[HEADER_BYTES + NONCE_BYTES :], header + store_key.encode()
            )
        except InvalidTag:
            raise NotAuthentic("the value does not authenticate under its store key") from None
        return plaintext, cipher is self._current
