"""Resume tokens: what a client shows to pick a stream up again, signed so that nobody else can.

A token names a stream, its tenant, the sequence number of the stream state it resumes from and
when it stops being valid. Replicas that share a secret accept each other's tokens. Layout (all
integers big-endian): version (1 byte) · expiry, Unix ms (8) · sequence (8) · stream id length (1) ·
stream id · tenant id length (1) · tenant id · HMAC-SHA-256 of everything before it, first 16 bytes.
The token is opaque to clients; nothing in it is secret, but nothing in it can be changed.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from voxwire_server.errors import InvalidInput, NotFound, PermissionDenied

__all__ = ["MAX_TOKEN_BYTES", "ResumePoint", "ResumeTokens"]

_VERSION = 1
_HEAD = struct.Struct(">BQQ")
_MAC_BYTES = 16
MAX_ID_BYTES = 255
MAX_TOKEN_BYTES = _HEAD.size + 2 + 2 * MAX_ID_BYTES + _MAC_BYTES
MIN_SECRET_BYTES = 16


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """What a valid token says: resume this tenant's stream from the state of this sequence number."""

    stream_id: str
    tenant_id: str
    sequence: int
    expires_at_s: float


class ResumeTokens:
    """Issues and checks tokens under one secret (the same on every replica)."""

    def __init__(self, secret: bytes, ttl_s: float, *, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"a resume token secret needs at least {MIN_SECRET_BYTES} bytes")
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        # A key of its own: the same secret may serve other purposes without their MACs ever meeting.
        self._key = hmac.new(secret, b"voxwire resume token key", hashlib.sha256).digest()
        self._ttl_s = ttl_s
        self._clock = clock

    def issue(self, stream_id: str, tenant_id: str, sequence: int) -> bytes:
        sid, tenant = stream_id.encode(), tenant_id.encode()
        if not sid or len(sid) > MAX_ID_BYTES or len(tenant) > MAX_ID_BYTES:
            raise ValueError("stream id must be 1..255 bytes and tenant id at most 255")
        if not 0 <= sequence < 2**64:
            raise ValueError(f"sequence out of range: {sequence}")
        expires_ms = int((self._clock() + self._ttl_s) * 1000)
        body = (
            _HEAD.pack(_VERSION, expires_ms, sequence)
            + bytes([len(sid)])
            + sid
            + bytes([len(tenant)])
            + tenant
        )
        return body + self._mac(body)

    def verify(self, token: bytes, tenant_id: str) -> ResumePoint:
        """The token's resume point. InvalidInput for a token this server's secret did not sign (or a
        damaged one), NotFound for an expired one (its state may be gone), PermissionDenied for
        another tenant's."""
        point = self._parse(token)
        if point.expires_at_s <= self._clock():
            raise NotFound("the resume token has expired: start a new stream")
        if not hmac.compare_digest(point.tenant_id.encode(), tenant_id.encode()):
            raise PermissionDenied("the resume token belongs to another tenant")
        return point

    def _parse(self, token: bytes) -> ResumePoint:
        if not _HEAD.size + 2 + _MAC_BYTES <= len(token) <= MAX_TOKEN_BYTES:
            raise _forged()
        body, mac = token[:-_MAC_BYTES], token[-_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(body)):
            raise _forged()
        version, expires_ms, sequence = _HEAD.unpack_from(body)
        if version != _VERSION:
            raise InvalidInput(f"the resume token has version {version}; this server reads {_VERSION}")
        at = _HEAD.size
        sid_len = body[at]
        sid = body[at + 1 : at + 1 + sid_len]
        at += 1 + sid_len
        if at >= len(body) or not sid:
            raise _forged()
        tenant_len = body[at]
        tenant = body[at + 1 : at + 1 + tenant_len]
        if at + 1 + tenant_len != len(body):
            raise _forged()
        try:
            return ResumePoint(sid.decode(), tenant.decode(), sequence, expires_ms / 1000)
        except UnicodeDecodeError:
            raise _forged() from None

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:_MAC_BYTES]


def _forged() -> InvalidInput:
    return InvalidInput("the resume token is not valid: it was not issued by this service or was altered")
