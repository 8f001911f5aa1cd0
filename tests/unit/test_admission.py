"""Admission policy, load shedding and call limits, with a fake clock and a fake decoder load."""

from __future__ import annotations

import asyncio
import threading

import pytest

from voxwire_server.config import ServerConfig
from voxwire_server.engines.base import DecoderLoad
from voxwire_server.engines.batching import FINAL, PARTIAL, BatchWorker
from voxwire_server.errors import ConfigError, OverCapacity
from voxwire_server.sessions.admission import (
    MAX_RETRY_S,
    PRESUMED_SPEAKING_S,
    AdmissionConfig,
    CallLimiter,
    CallLimits,
    StreamAdmission,
    TenantBuckets,
    TokenBucket,
    expected_final_delay_s,
    priority_share,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeLoad:
    """A decoder whose queue the test sets."""

    def __init__(self) -> None:
        self.value = DecoderLoad()

    def __call__(self) -> DecoderLoad:
        return self.value

    def behind_by(self, seconds: float, workers: int = 1) -> None:
        # Ten finals queued at a service time that makes them take `seconds` to clear.
        self.value = DecoderLoad(workers=workers, waiting_finals=10, final_service_s=seconds * workers / 10)


def admission(config: AdmissionConfig | None = None) -> tuple[StreamAdmission, FakeLoad, FakeClock]:
    load, clock = FakeLoad(), FakeClock()
    return StreamAdmission(config or AdmissionConfig(), load, clock=clock), load, clock


def test_expected_delay_counts_the_finals_ahead_over_the_workers() -> None:
    assert expected_final_delay_s(DecoderLoad()) == 0.0
    load = DecoderLoad(workers=2, waiting_finals=6, running_finals=2, final_service_s=0.1)
    assert expected_final_delay_s(load) == pytest.approx(0.4)
    # A final that has waited longer than the estimate says: the estimate is stale, the wait is not.
    stale = DecoderLoad(workers=2, waiting_finals=1, final_service_s=0.1, oldest_final_wait_s=3.0)
    assert expected_final_delay_s(stale) == 3.0


def test_priority_shares() -> None:
    assert [priority_share(p, 1) for p in (-5, 0, 1, 7)] == [0.5, 0.5, 1.0, 1.0]
    assert [priority_share(p, 3) for p in (0, 1, 2, 3)] == [0.25, 0.5, 0.75, 1.0]
    assert priority_share(0, 0) == 1.0  # no classes


def test_streams_are_admitted_while_the_decoder_keeps_up_then_refused_with_the_backlog() -> None:
    policy, load, clock = admission(AdmissionConfig(max_streams=10_000, max_delay_s=1.0))
    for _ in range(1000):  # no count refuses them while the decoder keeps up
        policy.admit("t", priority=1)
    clock.now += PRESUMED_SPEAKING_S + 0.1  # long enough that silent streams count as silent
    load.behind_by(4.0)
    with pytest.raises(OverCapacity, match="finals wait 4.0 s") as info:
        policy.admit("t", priority=1)
    assert info.value.retry_after_s == pytest.approx(4.0)  # the backlog's time to drain
    assert policy.refused == {"delay": 1}
    load.behind_by(0.9)
    policy.admit("t", priority=1)


def test_a_crowd_arriving_at_once_counts_as_speaking_until_it_says_otherwise() -> None:
    policy, load, clock = admission(
        AdmissionConfig(max_streams=10_000, max_delay_s=1.0, ramp_streams_per_s=0)
    )
    load.value = DecoderLoad(workers=2, final_service_s=0.25)  # an idle decoder, 0.25 s per final
    admitted = [policy.admit("t", priority=1) for _ in range(9)]  # the 9th sees 8 x 0.25 / 2 = 1.0 s
    with pytest.raises(OverCapacity, match="finals wait 1.1 s"):
        policy.admit("t", priority=1)
    # Streams that report silence stop counting; the presumption also lapses by itself.
    for ticket in admitted[:4]:
        ticket.speaking(False)
    policy.admit("t", priority=1)
    clock.now += PRESUMED_SPEAKING_S + 0.1
    assert policy.committed_delay_s() == 0.0


def test_the_retry_delay_is_bounded() -> None:
    policy, load, _ = admission()
    load.behind_by(500.0)
    with pytest.raises(OverCapacity) as info:
        policy.admit("t", 1)
    assert info.value.retry_after_s == MAX_RETRY_S


def test_lower_priorities_are_refused_at_a_lower_delay() -> None:
    policy, load, _ = admission(AdmissionConfig(max_delay_s=1.0, top_priority=1))
    load.behind_by(0.7)  # over half the target: priority 0 is turned away, priority 1 is not
    with pytest.raises(OverCapacity, match="priority 0"):
        policy.admit("free", priority=0)
    policy.admit("premium", priority=1)
    policy.admit("premium", priority=5)
    load.behind_by(0.4)
    policy.admit("free", priority=0)


def test_max_streams_is_a_hard_ceiling_with_a_share_kept_for_the_top_priority() -> None:
    policy, _, _ = admission(AdmissionConfig(max_streams=4, top_priority=1))
    first = policy.admit("free", 0)
    policy.admit("free", 0)
    with pytest.raises(OverCapacity, match="limit of 2 concurrent streams for priority 0") as info:
        policy.admit("free", 0)
    assert info.value.retry_after_s > 0
    policy.admit("premium", 1)
    policy.admit("premium", 1)
    with pytest.raises(OverCapacity, match="limit of 4"):
        policy.admit("premium", 1)
    assert policy.refused == {"streams": 2}
    first.close()
    first.close()  # twice is once
    policy.admit("premium", 1)
    assert policy.active == 4


def test_streams_in_an_utterance_count_as_finals_to_come() -> None:
    policy, load, _ = admission(AdmissionConfig(max_delay_s=1.0))
    load.value = DecoderLoad(workers=2, final_service_s=0.25)  # an empty queue
    tickets = [policy.admit("t", 1) for _ in range(9)]
    for ticket in tickets:
        ticket.speaking(True)
        ticket.speaking(True)  # said twice, counted once
    assert policy.speaking == 9
    # Nothing is queued yet, but nine finals are sure to come: 9 x 0.25 s over 2 workers.
    assert policy.delay_s() == 0.0
    assert policy.committed_delay_s() == pytest.approx(1.125)
    with pytest.raises(OverCapacity, match="behind"):
        policy.admit("t", 1)
    tickets[0].speaking(False)  # its utterance ended: the final is the queue's to count now
    tickets[1].close()  # a stream that ends mid-utterance no longer counts
    assert policy.speaking == 7
    policy.admit("t", 1)


def test_a_stream_does_not_wait_behind_its_own_final() -> None:
    shed: list[str] = []
    load, clock = FakeLoad(), FakeClock()
    config = AdmissionConfig(shed_partials_delay_s=0.3, shed_escalation_delay_s=0.5)
    policy = StreamAdmission(config, load, clock=clock, on_shed=shed.append)
    # Finals of long utterances take 0.7 s on each of two idle workers.
    load.value = DecoderLoad(workers=2, final_service_s=0.7)
    alone = policy.admit("t", 0)
    alone.speaking(True)
    # Alone on an idle decoder, its final would start at once: its partials are not shed...
    assert not alone.shed_partial() and not alone.skip_escalation()
    # ...while a new stream's final would wait behind its final: 0.35 s.
    assert policy.committed_delay_s() == pytest.approx(0.35)
    other = policy.admit("t", 0)
    other.speaking(True)
    # With two in an utterance, each one's final may wait behind the other's.
    assert alone.shed_partial() and other.shed_partial()
    assert shed == ["partial", "partial"]
    other.speaking(False)
    alone.speaking(False)  # its final is the queue's to count now, like any other
    load.value = DecoderLoad(workers=2, running_finals=1, final_service_s=0.7)
    assert alone.shed_partial()


def test_a_partial_service_time_stands_in_before_any_final_ran() -> None:
    load = DecoderLoad(workers=1, partial_service_s=0.2)
    assert expected_final_delay_s(load, speaking=5) == pytest.approx(1.0)


def test_a_crowd_arriving_at_once_is_let_in_gradually() -> None:
    policy, _, clock = admission(AdmissionConfig(ramp_streams_per_s=2.0, ramp_burst=3))
    for _ in range(3):
        policy.admit("t", 0)
    with pytest.raises(OverCapacity, match="2 per second") as info:
        policy.admit("t", 0)
    assert info.value.retry_after_s == pytest.approx(0.5)
    clock.now += 0.5
    policy.admit("t", 0)
    assert policy.active == 4


def test_a_refusal_for_delay_does_not_spend_a_ramp_token() -> None:
    policy, load, _ = admission(AdmissionConfig(ramp_streams_per_s=1.0, ramp_burst=1))
    load.behind_by(5.0)
    for _ in range(3):
        with pytest.raises(OverCapacity, match="behind"):
            policy.admit("t", 1)
    load.behind_by(0.0)
    policy.admit("t", 1)


def test_the_stream_context_gives_the_slot_back() -> None:
    policy, _, _ = admission(AdmissionConfig(max_streams=1, top_priority=0))
    with pytest.raises(RuntimeError), policy.stream("t", 0):
        assert policy.active == 1
        raise RuntimeError("the stream failed")
    assert policy.active == 0


def test_partials_are_shed_first_then_escalation() -> None:
    shed: list[str] = []
    load, clock = FakeLoad(), FakeClock()
    config = AdmissionConfig(shed_partials_delay_s=0.25, shed_escalation_delay_s=0.5, max_delay_s=1.0)
    policy = StreamAdmission(config, load, clock=clock, on_shed=shed.append)
    assert not policy.shed_partial() and not policy.skip_escalation()
    load.behind_by(0.3)
    assert policy.shed_partial() and not policy.skip_escalation()
    load.behind_by(0.6)
    assert policy.shed_partial() and policy.skip_escalation()
    policy.admit("t", 1)  # still admitting: degrading comes before refusing
    assert shed == ["partial", "partial", "escalation"]
    assert policy.shed == {"partial": 2, "escalation": 1}


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(rate_per_s=4.0, burst=2, now=0.0)
    assert [bucket.take(0.0) for _ in range(2)] == [0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.25)
    assert bucket.take(0.25) == 0.0
    assert bucket.take(100.0) == 0.0 and bucket.take(100.0) == 0.0  # refilled to the burst, no more
    assert bucket.take(100.0) > 0


def test_tenant_buckets_are_separate_and_bounded() -> None:
    clock = FakeClock()
    buckets = TenantBuckets(rate_per_s=1.0, burst=1, clock=clock, max_tenants=3)
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(1.0)
    assert buckets.take("b") == 0.0  # another tenant's bucket is full
    for tenant in ("c", "d", "e"):
        buckets.take(tenant)
    assert len(buckets) == 3


def test_call_limiter_concurrency_with_priority_shares() -> None:
    clock = FakeClock()
    refused: list[tuple[str, str]] = []
    limiter = CallLimiter(
        "synthesize",
        CallLimits(max_concurrent=4),
        top_priority=1,
        clock=clock,
        on_refused=lambda what, why: refused.append((what, why)),
    )
    with limiter.call("a", 0), limiter.call("a", 0):
        with pytest.raises(OverCapacity, match="2 concurrent synthesize calls for priority 0"):
            limiter.acquire("a", 0)
        with limiter.call("b", 1):
            clock.now += 2.0  # these calls take 2 s
        with limiter.call("b", 1), limiter.call("b", 1), pytest.raises(OverCapacity, match="4 conc") as info:
            limiter.acquire("b", 1)
    assert limiter.in_flight == 0
    # A slot frees about every (call duration / slots).
    assert info.value.retry_after_s == pytest.approx(2.0 / 4)
    assert refused == [("synthesize", "concurrency"), ("synthesize", "concurrency")]


def test_call_limiter_rate_per_tenant() -> None:
    clock = FakeClock()
    limiter = CallLimiter("recognize", CallLimits(rate_per_s=2.0, burst=2), clock=clock)
    for _ in range(2):
        with limiter.call("noisy", 0):
            pass
    with pytest.raises(OverCapacity, match="2 recognize calls per second per tenant") as info:
        limiter.acquire("noisy", 0)
    assert info.value.retry_after_s == pytest.approx(0.5)
    with limiter.call("quiet", 0):  # another tenant is not held back
        pass
    clock.now += 0.5
    with limiter.call("noisy", 0):
        pass
    assert limiter.refused == {"rate": 1}


def test_a_call_refused_for_concurrency_spends_no_token() -> None:
    clock = FakeClock()
    limits = CallLimits(max_concurrent=1, rate_per_s=0.001, burst=2)
    limiter = CallLimiter("warmup", limits, top_priority=0, clock=clock)
    with limiter.call("t", 0), pytest.raises(OverCapacity, match="concurrent"):
        limiter.acquire("t", 0)
    with limiter.call("t", 0):  # the second token is still there
        pass
    with pytest.raises(OverCapacity, match="rate limit"):
        limiter.acquire("t", 0)
    assert limiter.in_flight == 0


def test_no_limits_admit_everything() -> None:
    limiter = CallLimiter("recognize", CallLimits())
    for _ in range(1000):
        limiter.acquire("t", 0)
    assert limiter.in_flight == 1000


class Gate:
    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __call__(self, jobs: list[str]) -> list[str]:
        self.entered.set()
        self.gate.wait(timeout=30)
        return jobs


async def test_batch_worker_reports_its_queue_and_service_time() -> None:
    gate = Gate()
    worker: BatchWorker[str, str] = BatchWorker(gate, key=lambda j: 0, max_batch=1, max_wait_s=0.0, name="t")
    try:
        assert worker.load() == DecoderLoad(workers=1)
        running = asyncio.create_task(worker.submit("f0", priority=FINAL, deadline=0))
        await asyncio.to_thread(gate.entered.wait, 30)
        queued = [
            asyncio.create_task(worker.submit("f1", priority=FINAL, deadline=1)),
            asyncio.create_task(worker.submit("p1", priority=PARTIAL, deadline=1)),
        ]
        await asyncio.sleep(0)  # the tasks reach the queue
        load = worker.load()
        assert (load.waiting_finals, load.waiting_partials, load.running_finals) == (1, 1, 1)
        assert load.oldest_final_wait_s >= 0.0
        assert load.final_service_s == 0.0  # nothing has finished yet
        worker.seed_service_s(123.0)  # a warm-up's measurement stands in until jobs finish
        assert worker.load().final_service_s == 123.0
        gate.gate.set()
        await asyncio.gather(running, *queued)
        after = worker.load()
        assert (after.waiting_finals, after.running_finals, after.oldest_final_wait_s) == (0, 0, 0.0)
        assert 0.0 < after.final_service_s < 123.0 and 0.0 < after.partial_service_s < 123.0
    finally:
        gate.gate.set()
        worker.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"admission_max_delay_s": 0.0}, "admission_max_delay_s must be positive"),
        ({"shed_partials_delay_s": 2.0, "shed_escalation_delay_s": 1.0}, "partials are shed first"),
        ({"shed_partials_delay_s": 0.0}, "shed_partials_delay_s must be positive"),
        ({"stream_idle_timeout_s": -1.0}, "stream_idle_timeout_s must not be negative"),
        ({"synthesize_rate_per_s": float("nan")}, "synthesize_rate_per_s must not be negative"),
        ({"warmup_max_concurrent": -1}, "warmup_max_concurrent must not be negative"),
        ({"admission_top_priority": -1}, "admission_top_priority must not be negative"),
        ({"admission_ramp_burst": 0}, "admission_ramp_burst must be at least 1"),
    ],
)
def test_admission_config_is_validated(options: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServerConfig(**options).validate()  # type: ignore[arg-type]


def test_the_default_config_is_valid() -> None:
    ServerConfig().validate()
