"""Resume tokens: a valid one names its stream; a forged, altered, expired or foreign one is refused."""

from __future__ import annotations

import pytest

from voxwire_server.errors import InvalidInput, NotFound, PermissionDenied
from voxwire_server.sessions.resume_tokens import MAX_TOKEN_BYTES, ResumePoint, ResumeTokens

SECRET = b"a shared replica secret"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _tokens(clock: Clock, secret: bytes = SECRET, ttl_s: float = 60.0) -> ResumeTokens:
    return ResumeTokens(secret, ttl_s, clock=clock)


def test_a_token_names_its_stream_tenant_and_sequence() -> None:
    clock = Clock()
    token = _tokens(clock).issue("stream-1", "acme", 42)
    point = _tokens(clock).verify(token, "acme")  # another replica with the same secret
    assert point == ResumePoint("stream-1", "acme", 42, clock.now + 60.0)


def test_the_empty_tenant_of_a_server_without_auth_round_trips() -> None:
    clock = Clock()
    tokens = _tokens(clock)
    assert tokens.verify(tokens.issue("s", "", 0), "").tenant_id == ""


def test_every_altered_byte_is_caught() -> None:
    clock = Clock()
    tokens = _tokens(clock)
    token = tokens.issue("stream-1", "acme", 7)
    for i in range(len(token)):
        altered = bytearray(token)
        altered[i] ^= 0x01
        with pytest.raises(InvalidInput, match="not valid"):
            tokens.verify(bytes(altered), "acme")


@pytest.mark.parametrize("cut", [0, 1, 10, -1, -16])
def test_a_truncated_token_is_refused(cut: int) -> None:
    clock = Clock()
    tokens = _tokens(clock)
    token = tokens.issue("stream-1", "acme", 7)
    with pytest.raises(InvalidInput):
        tokens.verify(token[:cut], "acme")


def test_a_token_of_another_secret_or_of_garbage_is_refused() -> None:
    clock = Clock()
    foreign = _tokens(clock, secret=b"some other replica secret").issue("stream-1", "acme", 7)
    with pytest.raises(InvalidInput, match="not issued by this service"):
        _tokens(clock).verify(foreign, "acme")
    with pytest.raises(InvalidInput):
        _tokens(clock).verify(b"\x00" * MAX_TOKEN_BYTES, "acme")
    with pytest.raises(InvalidInput):
        _tokens(clock).verify(b"x" * (MAX_TOKEN_BYTES + 1), "acme")


def test_an_expired_token_is_not_found_and_a_live_one_is_accepted_up_to_its_expiry() -> None:
    clock = Clock()
    tokens = _tokens(clock, ttl_s=30.0)
    token = tokens.issue("stream-1", "acme", 7)
    clock.now += 29.9
    assert tokens.verify(token, "acme").sequence == 7
    clock.now += 0.1
    with pytest.raises(NotFound, match="expired"):
        tokens.verify(token, "acme")


def test_another_tenants_token_is_refused() -> None:
    clock = Clock()
    tokens = _tokens(clock)
    token = tokens.issue("stream-1", "acme", 7)
    with pytest.raises(PermissionDenied, match="another tenant"):
        tokens.verify(token, "globex")
    with pytest.raises(PermissionDenied):
        tokens.verify(token, "")


def test_bad_arguments_are_caller_bugs() -> None:
    clock = Clock()
    with pytest.raises(ValueError, match="16 bytes"):
        ResumeTokens(b"short", 60.0, clock=clock)
    with pytest.raises(ValueError, match="positive"):
        ResumeTokens(SECRET, 0.0, clock=clock)
    tokens = _tokens(clock)
    with pytest.raises(ValueError):
        tokens.issue("", "acme", 1)
    with pytest.raises(ValueError):
        tokens.issue("s" * 256, "acme", 1)
    with pytest.raises(ValueError):
        tokens.issue("s", "acme", -1)
    assert len(tokens.issue("s" * 255, "t" * 255, 2**64 - 1)) == MAX_TOKEN_BYTES
