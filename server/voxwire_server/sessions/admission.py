"""Admission, load shedding and per-tenant limits: policy over the decoder's load and a clock.

Streams are admitted while the decoder keeps up, judged by how long a final submitted now would
wait for a worker (``expected_final_delay_s``), not by a count of streams; ``max_streams`` stays a
hard ceiling. Under pressure a stream degrades before anything is refused: partials are skipped
first, then escalation to the accurate tier; new streams are refused last. A lower priority gets a
smaller share of every threshold, so a premium tenant keeps its share when the others are turned
away (``priority_share``). Unary calls (Recognize, Synthesize, Warmup) have concurrency limits and
per-tenant token buckets. Everything here is pure: the load signal and the clock are passed in.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from voxwire_server.engines.base import DecoderLoad
from voxwire_server.errors import OverCapacity

Clock = Callable[[], float]
# Called with (what was refused: "stream", "recognize", ...; why: "delay", "streams", "ramp",
# "concurrency", "rate").
OnRefused = Callable[[str, str], None]
# Called with what was shed: "partial" or "escalation".
OnShed = Callable[[str], None]

# A refused caller is asked to wait at least this long, at most MAX_RETRY_S.
MIN_RETRY_S = 0.1
MAX_RETRY_S = 30.0
# A caller refused at the stream ceiling is asked to wait this long (a slot frees when any stream ends).
STREAM_CEILING_RETRY_S = 1.0
# Tenants whose token buckets are remembered; the least recently seen beyond it are forgotten (a
# forgotten bucket starts full again, as it would have refilled anyway after a while).
MAX_TENANT_BUCKETS = 10_000
# Weight of the latest call in the moving average of call durations.
DURATION_EWMA_WEIGHT = 0.2


def priority_share(priority: int, top_priority: int) -> float:
    """The share of a threshold or limit that callers of ``priority`` may use: (p + 1) / (top + 1)
    for 0 <= p < top, all of it at or above ``top_priority``; a negative priority counts as 0."""
    p = max(0, min(priority, top_priority))
    return (p + 1) / (top_priority + 1)


def _slots(limit: int, share: float) -> int:
    # Every priority may use at least one slot of a limit.
    return max(1, math.ceil(limit * share))


def expected_final_delay_s(load: DecoderLoad, speaking: int = 0) -> float:
    """How long a final would wait before a worker starts it: the finals ahead of it (waiting and
    running, and with ``speaking`` one for each stream now in an utterance: work that is sure to
    come) at the recent service time per final, spread over the workers; or, if longer, how long
    the oldest waiting final has already waited (what the estimate misses when it is stale).
    Before any final has run, a partial's service time stands in (the same windows)."""
    service_s = load.final_service_s or load.partial_service_s
    ahead = load.waiting_finals + load.running_finals + speaking
    backlog_s = ahead * service_s / max(1, load.workers)
    return max(backlog_s, load.oldest_final_wait_s)


def _retry_s(seconds: float) -> float:
    return min(MAX_RETRY_S, max(MIN_RETRY_S, seconds))


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    # Hard ceiling on concurrent streams (priority p may fill priority_share(p) of it).
    max_streams: int = 256
    # A stream of the top priority is refused while a final would wait longer than this for the
    # decoder; priority p is refused above priority_share(p) of it.
    max_delay_s: float = 1.0
    # Priorities at or above this get full thresholds and limits.
    top_priority: int = 0
    # Partials are skipped while a final would wait longer than this; escalation above the next.
    shed_partials_delay_s: float = 0.3
    shed_escalation_delay_s: float = 0.5
    # New streams admitted per second (a token bucket of ramp_burst): the decoder's load shows a
    # new stream's cost only once it has spoken, so a crowd arriving at once is let in gradually.
    # 0: no ramp.
    ramp_streams_per_s: float = 0.0
    ramp_burst: int = 0


class TokenBucket:
    """``rate_per_s`` tokens a second up to ``burst``; starts full."""

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._updated = now

    def take(self, now: float) -> float:
        """Takes a token: 0.0 when one was there, else the seconds until one will be (none taken)."""
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate_per_s)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate_per_s


class TenantBuckets:
    """One token bucket per tenant, for the most recently seen MAX_TENANT_BUCKETS tenants."""

    def __init__(self, rate_per_s: float, burst: int, clock: Clock, max_tenants: int = MAX_TENANT_BUCKETS):
        self._rate = rate_per_s
        self._burst = burst if burst > 0 else max(1, math.ceil(rate_per_s))
        self._clock = clock
        self._max = max_tenants
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, tenant_id: str) -> float:
        now = self._clock()
        bucket = self._buckets.get(tenant_id)
        if bucket is None:
            bucket = self._buckets[tenant_id] = TokenBucket(self._rate, self._burst, now)
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(tenant_id)
        return bucket.take(now)


# How long a newly admitted stream that has not yet spoken counts as speaking.
PRESUMED_SPEAKING_S = 2.0


class StreamAdmission:
    """Admits recognition streams and decides what a stream sheds, from the decoder's load."""

    def __init__(
        self,
        config: AdmissionConfig,
        load: Callable[[], DecoderLoad],
        *,
        clock: Clock = time.monotonic,
        on_refused: OnRefused | None = None,
        on_shed: OnShed | None = None,
    ) -> None:
        self.config = config
        self._load = load
        self._clock = clock
        self._on_refused = on_refused
        self._on_shed = on_shed
        self._ramp = (
            TokenBucket(config.ramp_streams_per_s, config.ramp_burst, clock())
            if config.ramp_streams_per_s > 0
            else None
        )
        self.active = 0
        # Admitted streams now in an utterance: each will submit a final.
        self.speaking = 0
        # Streams admitted in the last PRESUMED_SPEAKING_S that have not yet said whether they speak:
        # counted as speaking, so a crowd arriving at once does not look free until it talks.
        self._fresh: dict[StreamTicket, float] = {}
        self.refused: dict[str, int] = {}
        self.shed: dict[str, int] = {}

    def _refuse(self, reason: str, message: str, retry_after_s: float) -> OverCapacity:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        if self._on_refused is not None:
            self._on_refused("stream", reason)
        return OverCapacity(message, retry_after_s=_retry_s(retry_after_s))

    def delay_s(self) -> float:
        """The wait of a final submitted now."""
        return expected_final_delay_s(self._load())

    def committed_delay_s(self, asking: StreamTicket | None = None) -> float:
        """The wait of the last final if every stream in an utterance ended it now: what shedding
        and admission decide from (a stream's cost shows in the queue only once it has spoken, and
        utterances of many streams end together). ``asking``: the stream this is for, whose own
        final, if it is in an utterance, is not ahead of itself (without this, a lone stream on an
        idle decoder whose finals take over the partials threshold per worker shed every partial)."""
        own = 1 if asking is not None and asking.in_utterance else 0
        others = self.speaking + self._presumed() - own
        return expected_final_delay_s(self._load(), others)

    def _presumed(self) -> int:
        cutoff = self._clock() - PRESUMED_SPEAKING_S
        for ticket in [t for t, at in self._fresh.items() if at < cutoff]:
            del self._fresh[ticket]
        return len(self._fresh)

    def reported(self, ticket: StreamTicket) -> None:
        self._fresh.pop(ticket, None)

    def admit(self, tenant_id: str, priority: int) -> StreamTicket:
        """A stream slot (give it back with ``StreamTicket.close``), or OverCapacity."""
        c = self.config
        share = priority_share(priority, c.top_priority)
        ceiling = _slots(c.max_streams, share)
        if self.active >= ceiling:
            raise self._refuse(
                "streams",
                f"this server is at its limit of {ceiling} concurrent streams for priority {priority}",
                STREAM_CEILING_RETRY_S,
            )
        delay = self.committed_delay_s()
        threshold = c.max_delay_s * share
        if delay > threshold:
            raise self._refuse(
                "delay",
                f"the recognizer is behind: finals wait {delay:.1f} s for the decoder, over the "
                f"{threshold:.2f} s this server allows new streams of priority {priority}",
                delay,
            )
        if self._ramp is not None:
            wait_s = self._ramp.take(self._clock())
            if wait_s > 0:
                raise self._refuse(
                    "ramp",
                    f"streams are arriving faster than the {c.ramp_streams_per_s:g} per second this "
                    "server admits",
                    wait_s,
                )
        self.active += 1
        ticket = StreamTicket(self)
        self._fresh[ticket] = self._clock()
        return ticket

    @contextmanager
    def stream(self, tenant_id: str, priority: int) -> Iterator[StreamTicket]:
        ticket = self.admit(tenant_id, priority)
        try:
            yield ticket
        finally:
            ticket.close()

    def _shedding(self, kind: str, threshold_s: float, asking: StreamTicket | None) -> bool:
        if self.committed_delay_s(asking) <= threshold_s:
            return False
        self.shed[kind] = self.shed.get(kind, 0) + 1
        if self._on_shed is not None:
            self._on_shed(kind)
        return True

    def shed_partial(self, asking: StreamTicket | None = None) -> bool:
        """Whether a partial due now is skipped (counted as shed): finals come first."""
        return self._shedding("partial", self.config.shed_partials_delay_s, asking)

    def skip_escalation(self, asking: StreamTicket | None = None) -> bool:
        """Whether a final that would be re-decoded on the accurate tier keeps its fast answer."""
        return self._shedding("escalation", self.config.shed_escalation_delay_s, asking)


class StreamTicket:
    """One admitted stream: asks what to shed, and says when it is in an utterance."""

    def __init__(self, admission: StreamAdmission) -> None:
        self._admission = admission
        self._speaking = False
        self._closed = False

    @property
    def in_utterance(self) -> bool:
        return self._speaking

    def shed_partial(self) -> bool:
        return self._admission.shed_partial(self)

    def skip_escalation(self) -> bool:
        return self._admission.skip_escalation(self)

    def speaking(self, active: bool) -> None:
        self._admission.reported(self)
        if self._closed or active == self._speaking:
            return
        self._speaking = active
        self._admission.speaking += 1 if active else -1

    def close(self) -> None:
        if self._closed:
            return
        self.speaking(False)
        self._closed = True
        self._admission.active -= 1


@dataclass(frozen=True, slots=True)
class CallLimits:
    # Calls in progress at once (priority p may use priority_share(p) of them); 0: no limit.
    max_concurrent: int = 0
    # Calls a second per tenant, with bursts of up to ``burst``; 0: no limit.
    rate_per_s: float = 0.0
    # 0: the rate rounded up (at least 1).
    burst: int = 0


class CallLimiter:
    """Concurrency limit and per-tenant rate limit of one kind of call; over either, OverCapacity
    with the delay after which a retry is likely to get through."""

    def __init__(
        self,
        name: str,
        limits: CallLimits,
        *,
        top_priority: int = 0,
        clock: Clock = time.monotonic,
        on_refused: OnRefused | None = None,
    ) -> None:
        self.name = name
        self.limits = limits
        self._top = top_priority
        self._clock = clock
        self._on_refused = on_refused
        self._buckets = (
            TenantBuckets(limits.rate_per_s, limits.burst, clock) if limits.rate_per_s > 0 else None
        )
        self.in_flight = 0
        self._duration_s: float | None = None
        self.refused: dict[str, int] = {}

    def _refuse(self, reason: str, message: str, retry_after_s: float) -> OverCapacity:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        if self._on_refused is not None:
            self._on_refused(self.name, reason)
        return OverCapacity(message, retry_after_s=_retry_s(retry_after_s))

    def acquire(self, tenant_id: str, priority: int) -> None:
        """Takes a slot (give it back with ``release``) or raises OverCapacity."""
        limit = self.limits.max_concurrent
        if limit:
            slots = _slots(limit, priority_share(priority, self._top))
            if self.in_flight >= slots:
                # A slot frees about every (call duration / slots) seconds.
                typical_s = self._duration_s if self._duration_s is not None else 1.0
                raise self._refuse(
                    "concurrency",
                    f"this server is at its limit of {slots} concurrent {self.name} calls for "
                    f"priority {priority}",
                    typical_s / slots,
                )
        if self._buckets is not None:
            wait_s = self._buckets.take(tenant_id)
            if wait_s > 0:
                raise self._refuse(
                    "rate",
                    f"over the rate limit of {self.limits.rate_per_s:g} {self.name} calls per second "
                    "per tenant",
                    wait_s,
                )
        self.in_flight += 1

    def release(self, duration_s: float) -> None:
        self.in_flight -= 1
        last = self._duration_s
        self._duration_s = duration_s if last is None else last + DURATION_EWMA_WEIGHT * (duration_s - last)

    @contextmanager
    def call(self, tenant_id: str, priority: int) -> Iterator[None]:
        self.acquire(tenant_id, priority)
        started = self._clock()
        try:
            yield
        finally:
            self.release(self._clock() - started)
