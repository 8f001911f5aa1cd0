"""What a client keeps to resume a recognition stream, for both the sync and the asyncio client:
the audio the server's latest stored state does not cover, the latest token, and what it has passed
on to the caller already, so that a resumed stream yields no update twice."""

from __future__ import annotations

import random
import threading
from collections import deque
from dataclasses import dataclass

from voxwire.errors import FailedPreconditionError, RequestCancelledError, UnavailableError, VoxwireError
from voxwire.types import Resumability, SpeechEventType, StreamUpdate

__all__ = ["ResumePolicy", "StreamResume"]


@dataclass(frozen=True, slots=True)
class ResumePolicy:
    # Resume attempts in a row before the error is raised (0: never resume).
    attempts: int = 5
    # The first wait before an attempt, doubled after each failed one, at most max_backoff_s.
    backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    # Roll over to a new call after this long on one call (None: never).
    rollover_s: float | None = None
    # Before each attempt, wait at most this long for the channel to connect again.
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 0:
            raise ValueError(f"resume_attempts must be >= 0, got {self.attempts}")
        if self.rollover_s is not None and not self.rollover_s > 0:
            raise ValueError(f"rollover_s must be positive, got {self.rollover_s}")

    def delay_s(self, attempt: int) -> float:
        """The wait before the ``attempt``-th attempt in a row (1-based), with jitter: replicas that
        lost many streams at once are not asked again all in the same instant."""
        if attempt <= 1:
            return 0.0
        base = min(self.max_backoff_s, self.backoff_s * 2.0 ** (attempt - 2))
        return base * (0.5 + random.random() / 2)


def resumes_after(error: VoxwireError) -> bool:
    """Whether a stream that failed with ``error`` may go on from its token: the server went away
    (draining, killed, its connection lost), the stream was taken over elsewhere, or the call was
    reset from the other side (a load balancer's RST_STREAM when its replica died: CANCELLED, which
    this client's own cancelling never reports, as it ends the iteration instead)."""
    return isinstance(error, UnavailableError | RequestCancelledError)


class StreamResume:
    """One stream's side of resumption, across the calls that carry it."""

    def __init__(self, token: bytes = b"") -> None:
        self.token = token
        self.resumable = bool(token)
        # Audio recorded as sent, from the first byte of the stream on: (offset, bytes).
        self._chunks: deque[tuple[int, bytes]] = deque()
        # The sync client records and replays on gRPC's thread, and observes on the caller's.
        self._lock = threading.Lock()
        self._origin = 0
        self.sent_bytes = 0
        # The source has ended (end_of_audio is still to be sent on each new call).
        self.source_done = False
        self._last_final = -1
        self._events: dict[SpeechEventType, int] = {}

    @property
    def restartable(self) -> bool:
        """No token yet (the server has not said anything, or could not store the stream's state),
        no final passed on, all the audio still kept: the stream can start again as a new one, with
        all the audio sent so far (what it passes on again is dropped as seen)."""
        with self._lock:
            kept_from_start = not self._chunks or self._chunks[0][0] == 0
        return not self.token and self._last_final < 0 and self._origin == 0 and kept_from_start

    def may_go_on(self, error: VoxwireError) -> bool:
        return resumes_after(error) and (self.resumable or self.restartable)

    def start_at(self, offset: int) -> None:
        """A stream resumed by hand: its source begins at this offset of the stream's audio."""
        self._origin = self.sent_bytes = offset

    def record(self, chunk: bytes) -> None:
        """A chunk about to be sent: kept until a stored state covers it."""
        if chunk:
            with self._lock:
                self._chunks.append((self.sent_bytes, chunk))
                self.sent_bytes += len(chunk)

    def _release(self, offset: int) -> None:
        with self._lock:
            self._release_locked(offset)

    def _release_locked(self, offset: int) -> None:
        while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) <= offset:
            self._chunks.popleft()

    @property
    def kept_bytes(self) -> int:
        with self._lock:
            return sum(len(c) for _, c in self._chunks)

    def replay(self, offset: int) -> list[bytes]:
        """The audio to send again to a stream resumed at ``offset``."""
        with self._lock:
            first = self._chunks[0][0] if self._chunks else self.sent_bytes
            if not first <= offset <= self.sent_bytes:
                raise FailedPreconditionError(
                    "FAILED_PRECONDITION",
                    f"the server resumed the stream at byte {offset}, but this client keeps bytes {first} "
                    f"to {self.sent_bytes}",
                )
            self._release_locked(offset)
            return [c[max(0, offset - start) :] for start, c in self._chunks]

    def observe(self, update: StreamUpdate) -> bool:
        """Takes in what an update says of resumption; False when the caller has had it already (or it
        is the notice of a resume the client made itself)."""
        if update.resume_token:
            self.token = update.resume_token
        # An older token of a stream whose store failed for now still resumes from its state.
        self.resumable = bool(self.token) and update.resumability in (
            Resumability.RESUMABLE,
            Resumability.STORE_UNAVAILABLE,
        )
        if update.resumability in (Resumability.RESUMABLE, Resumability.STORE_UNAVAILABLE):
            self._release(update.resume_offset_bytes)
        result, event = update.result, update.speech_event
        if result is not None:
            if result.utterance_index <= self._last_final:
                return False
            if result.is_final:
                self._last_final = result.utterance_index
        elif event is not None:
            if event.utterance_index <= self._events.get(event.type, -1):
                return False
            self._events[event.type] = event.utterance_index
        return True
