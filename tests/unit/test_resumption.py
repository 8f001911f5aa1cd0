"""Stream-state writes and resumes: compare-and-set ownership, a store that fails (or times out after
its write landed), and every way a token can fail to resume."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from tests.unit.test_stream_state import _state
from voxwire_server.domain import Resumability
from voxwire_server.errors import InvalidInput, LimitExceeded, NotFound, PermissionDenied, Unavailable
from voxwire_server.sessions.resumption import StateSettings, StreamStates
from voxwire_server.sessions.stream_state import StreamState
from voxwire_server.storage.base import StoreUnavailable
from voxwire_server.storage.state import MemoryStateStore, StateConflict

SECRET = b"0123456789abcdef-secret"


class FlakyStore(MemoryStateStore):
    """A memory store whose next writes fail: before storing (down) or after (a timeout that landed)."""

    def __init__(self) -> None:
        super().__init__(1 << 24)
        self.fail_before = 0
        self.fail_after = 0

    async def save(
        self, stream_id: str, payload: bytes, *, sequence: int, previous: int, ttl_s: float, owner: str = ""
    ) -> None:
        if self.fail_before:
            self.fail_before -= 1
            raise StoreUnavailable("down")
        await super().save(stream_id, payload, sequence=sequence, previous=previous, ttl_s=ttl_s, owner=owner)
        if self.fail_after:
            self.fail_after -= 1
            raise StoreUnavailable("timed out")


def _states(store: MemoryStateStore | None = None) -> StreamStates:
    return StreamStates(store or FlakyStore(), SECRET, StateSettings(ttl_s=60, max_kept_finals=2))


def _builder(key: str, **changes: object) -> object:
    def build(sequence: int) -> StreamState:
        fields: dict[str, object] = {"finals": (), "resend_from": 0, **changes}
        return replace(_state(), key=key, sequence=sequence, **fields)  # type: ignore[arg-type]

    return build


def test_writes_advance_the_sequence_and_a_second_owner_is_fenced_off() -> None:
    async def run() -> None:
        states = _states()
        first = states.writer("acme", "alice")
        build = _builder(first.key)
        assert await first.write(build) and await first.write(build)  # type: ignore[arg-type]
        assert first.sequence == 2 and first.status is Resumability.RESUMABLE
        resumed = await states.resume(first.token(), "acme", "tiny.en")
        second = states.writer("acme", "alice", resumed)
        assert await second.write(build)  # type: ignore[arg-type]
        with pytest.raises(StateConflict):
            await first.write(build)  # type: ignore[arg-type]

    asyncio.run(run())


def test_a_failed_store_leaves_the_stream_going_and_a_landed_timeout_is_adopted() -> None:
    async def run() -> None:
        store = FlakyStore()
        states = _states(store)
        writer = states.writer("acme", "")
        build = _builder(writer.key)
        store.fail_before = 1
        assert not await writer.write(build)  # type: ignore[arg-type]
        assert writer.status is Resumability.STORE_UNAVAILABLE and writer.token() == b""
        assert await writer.write(build)  # type: ignore[arg-type]
        assert writer.status is Resumability.RESUMABLE and writer.sequence == 1
        store.fail_after = 1  # stored as 2, but the writer was told it failed
        assert not await writer.write(build)  # type: ignore[arg-type]
        assert await writer.write(build)  # type: ignore[arg-type]
        assert writer.sequence == 3 and (await store.load(writer.key)).sequence == 3  # type: ignore[union-attr]

    asyncio.run(run())


def test_another_connections_write_of_a_failed_sequence_is_not_adopted() -> None:
    async def run() -> None:
        store = FlakyStore()
        states = _states(store)
        first = states.writer("acme", "alice")
        build = _builder(first.key)
        assert await first.write(build)  # type: ignore[arg-type]
        store.fail_before = 1  # the write of 2 fails without landing
        assert not await first.write(build)  # type: ignore[arg-type]
        # The client resumes elsewhere from 1; that connection writes 2.
        second = states.writer("acme", "alice", await states.resume(first.token(), "acme", "tiny.en"))
        assert await second.write(build)  # type: ignore[arg-type]
        with pytest.raises(StateConflict):
            await first.write(build)  # type: ignore[arg-type]
        assert await second.write(build)  # type: ignore[arg-type]

    asyncio.run(run())


def test_a_state_that_expired_or_was_purged_ends_its_stream() -> None:
    async def run() -> None:
        store = FlakyStore()
        states = _states(store)
        writer = states.writer("acme", "alice")
        assert await writer.write(_builder(writer.key))  # type: ignore[arg-type]
        assert await states.purge_owner("acme", "alice") == 1
        with pytest.raises(NotFound, match="expired or was purged"):
            await writer.write(_builder(writer.key))  # type: ignore[arg-type]

    asyncio.run(run())


def test_tokens_that_do_not_resume() -> None:
    async def run() -> None:
        store = FlakyStore()
        states = _states(store)
        writer = states.writer("acme", "alice")
        await writer.write(_builder(writer.key))  # type: ignore[arg-type]
        token = writer.token()
        with pytest.raises(InvalidInput):
            await states.resume(token[:-1] + bytes([token[-1] ^ 1]), "acme", "tiny.en")
        with pytest.raises(InvalidInput):
            other = StreamStates(store, b"another secret of 16+ bytes", StateSettings())
            await other.resume(token, "acme", "tiny.en")
        with pytest.raises(PermissionDenied):
            await states.resume(token, "globex", "tiny.en")
        with pytest.raises(NotFound, match="another model"):
            await states.resume(token, "acme", "base.en")
        # A state that drops finals beyond max_kept_finals refuses tokens older than them.
        await writer.write(_builder(writer.key, resend_from=2))  # type: ignore[arg-type]
        with pytest.raises(LimitExceeded, match="too old"):
            await states.resume(token, "acme", "tiny.en")
        owner = states.owner("acme", "alice")
        await store.save(writer.key, b"\x93garbage", sequence=3, previous=2, ttl_s=60, owner=owner)
        with pytest.raises(NotFound, match="cannot be read"):
            await states.resume(token, "acme", "tiny.en")
        assert await states.purge_owner("acme", "alice") == 1
        with pytest.raises(NotFound):
            await states.resume(token, "acme", "tiny.en")
        await store.aclose()
        with pytest.raises(Unavailable):
            await states.resume(token, "acme", "tiny.en")

    asyncio.run(run())


def test_states_are_sealed_at_rest() -> None:
    async def run() -> None:
        store = FlakyStore()
        states = _states(store)
        writer = states.writer("acme", "alice")
        await writer.write(_builder(writer.key, previous_text="turn on the kitchen lights"))  # type: ignore[arg-type]
        saved = await store.load(writer.key)
        assert saved is not None
        assert b"kitchen" not in saved.payload and b"acme" not in saved.payload
        # Moved to another stream's key, it no longer opens.
        other = states.writer("acme", "alice")
        await other.write(_builder(other.key))  # type: ignore[arg-type]
        await store.save(other.key, saved.payload, sequence=2, previous=1, ttl_s=60)
        with pytest.raises(NotFound, match="cannot be read"):
            await states.resume(states.tokens.issue(other.key, "acme", 2), "acme", "tiny.en")
        assert (await states.resume(writer.token(), "acme", "tiny.en")).state.previous_text.endswith("lights")

    asyncio.run(run())


def test_owner_tags_name_no_ids_and_keep_tenants_apart() -> None:
    states = _states()
    tag = states.owner("acme", "alice")
    assert "acme" not in tag and "alice" not in tag
    assert tag != states.owner("acmea", "lice") and tag != states.owner("globex", "alice")
    assert states.owner("acme", "") == ""
