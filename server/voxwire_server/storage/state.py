"""Stream-state stores: live state of resumable streams, advanced by compare-and-set on a sequence.

Live state is not cache: it is never evicted to make room (a full memory store refuses the write
with StoreUnavailable), and every write names the sequence it replaces, so
two replicas can never both advance one stream: the second write of a sequence fails with
StateConflict. Sequences start at 1; 0 means "no state stored".
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from voxwire_server.errors import Unavailable
from voxwire_server.storage.base import StoreUnavailable, check_ttl_s

__all__ = ["MemoryStateStore", "SavedState", "StateConflict", "StateStore", "check_save"]


class StateConflict(Unavailable):
    """The stored sequence is not the one this writer replaces: the stream moved on elsewhere."""

    def __init__(self, stream_id: str, stored: int, expected: int) -> None:
        super().__init__("the stream was resumed elsewhere; this connection no longer owns it")
        self.stream_id = stream_id
        self.stored = stored
        self.expected = expected


@dataclass(frozen=True, slots=True)
class SavedState:
    sequence: int
    payload: bytes
    owner: str = ""


class StateStore(Protocol):
    """One instance is used from one event loop. Every method may raise StoreUnavailable."""

    name: str

    async def load(self, stream_id: str) -> SavedState | None:
        """The stream's latest state, or None when there is none (never written, deleted, expired)."""
        ...

    async def save(
        self, stream_id: str, payload: bytes, *, sequence: int, previous: int, ttl_s: float, owner: str = ""
    ) -> None:
        """Store payload as ``sequence`` if the stored sequence is ``previous`` (0: none stored);
        otherwise raise StateConflict. The state expires ttl_s after this write."""
        ...

    async def delete(self, stream_id: str) -> bool:
        """True when live state was deleted."""
        ...

    async def purge_owner(self, owner: str) -> int:
        """Delete the live state of every stream last saved with this owner; returns how many."""
        ...

    async def aclose(self) -> None:
        """Later calls raise StoreUnavailable. Idempotent."""
        ...


def check_save(sequence: int, previous: int, ttl_s: float) -> None:
    """Caller bugs, refused the same way by every backend."""
    check_ttl_s(ttl_s)
    if not 0 <= previous < sequence < 2**63:
        raise ValueError(f"sequence {sequence} must be above previous {previous} (>= 0, < 2**63)")


class _Entry:
    __slots__ = ("stream_id", "state", "expires_at")

    def __init__(self, stream_id: str, state: SavedState, expires_at: float) -> None:
        self.stream_id = stream_id
        self.state = state
        self.expires_at = expires_at


class MemoryStateStore:
    """The default: in this process only, so a stream survives a dropped connection, not a restart."""

    name = "memory"

    def __init__(self, max_bytes: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self._max_bytes = max_bytes
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._used_bytes = 0
        # One (deadline, seq, entry) per entry: a save only moves the entry's expiry, and the sweep
        # pushes a renewed entry back at its new deadline, so the heap never outgrows the entries.
        self._deadlines: list[tuple[float, int, _Entry]] = []
        self._seq = itertools.count()
        self._closed = False

    @property
    def used_bytes(self) -> int:
        return self._used_bytes

    async def load(self, stream_id: str) -> SavedState | None:
        self._check_open()
        entry = self._live(stream_id, self._clock())
        return None if entry is None else entry.state

    async def save(
        self, stream_id: str, payload: bytes, *, sequence: int, previous: int, ttl_s: float, owner: str = ""
    ) -> None:
        self._check_open()
        check_save(sequence, previous, ttl_s)
        now = self._clock()
        self._sweep(now)
        entry = self._live(stream_id, now)
        stored = 0 if entry is None else entry.state.sequence
        if stored != previous:
            raise StateConflict(stream_id, stored, previous)
        payload = bytes(payload)  # never keep a caller's mutable buffer
        old_bytes = 0 if entry is None else _charge(stream_id, entry.state)
        state = SavedState(sequence, payload, owner)
        if self._used_bytes - old_bytes + _charge(stream_id, state) > self._max_bytes:
            raise StoreUnavailable(f"the in-process stream-state store is full ({self._max_bytes} bytes)")
        self._used_bytes += _charge(stream_id, state) - old_bytes
        if entry is None:
            entry = self._entries[stream_id] = _Entry(stream_id, state, now + ttl_s)
            heapq.heappush(self._deadlines, (entry.expires_at, next(self._seq), entry))
        else:
            entry.state, entry.expires_at = state, now + ttl_s

    async def delete(self, stream_id: str) -> bool:
        self._check_open()
        if self._live(stream_id, self._clock()) is None:
            return False
        self._remove(stream_id)
        return True

    async def purge_owner(self, owner: str) -> int:
        self._check_open()
        if not owner:
            return 0
        now = self._clock()
        doomed = [sid for sid, e in self._entries.items() if e.state.owner == owner and e.expires_at > now]
        for sid in doomed:
            self._remove(sid)
        return len(doomed)

    async def aclose(self) -> None:
        self._closed = True
        self._entries.clear()
        self._deadlines.clear()
        self._used_bytes = 0

    def _live(self, stream_id: str, now: float) -> _Entry | None:
        entry = self._entries.get(stream_id)
        if entry is not None and entry.expires_at <= now:
            self._remove(stream_id)
            return None
        return entry

    def _remove(self, stream_id: str) -> None:
        entry = self._entries.pop(stream_id)
        self._used_bytes -= _charge(stream_id, entry.state)

    def _sweep(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, entry = heapq.heappop(self._deadlines)
            if self._entries.get(entry.stream_id) is not entry:
                continue  # deleted (and maybe saved anew, with a heap item of its own)
            if entry.expires_at <= now:
                self._remove(entry.stream_id)
            else:
                heapq.heappush(self._deadlines, (entry.expires_at, next(self._seq), entry))

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("the in-process stream-state store is closed")


def _charge(stream_id: str, state: SavedState) -> int:
    return len(stream_id) + len(state.payload) + len(state.owner) + 64
