"""Metrics (every family scraped, decoder queue, per-stream latencies) and the JSON log format."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import threading
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from voxwire_server.__main__ import log_handler
from voxwire_server.config import load_config
from voxwire_server.domain import Result, SpeechEvent, SpeechEventType, StreamUpdate, Tier
from voxwire_server.engines.batching import FINAL, PARTIAL, BatchWorker
from voxwire_server.errors import ConfigError
from voxwire_server.logcontext import request_id
from voxwire_server.metrics import Telemetry

README = Path(__file__).resolve().parents[2] / "README.md"

# Families the server always exposes (a Counter "x" is scraped as "x_total").
EXPECTED = {
    "voxwire_active_streams",
    "voxwire_asr_final_latency_seconds",
    "voxwire_asr_first_partial_latency_seconds",
    "voxwire_asr_recognize_latency_seconds",
    "voxwire_asr_decoder_queue_wait_seconds",
    "voxwire_asr_decoder_queue_depth",
    "voxwire_asr_decoder_batch_size",
    "voxwire_asr_escalations",
    "voxwire_cache_requests",
    "voxwire_tts_active_streams",
    "voxwire_tts_units",
    "voxwire_tts_stitches",
    "voxwire_tts_first_audio_seconds",
    "voxwire_tts_synthesize_latency_seconds",
    "voxwire_rpc_requests",
    "voxwire_rpc_duration_seconds",
    # The default collectors, on Telemetry's own registry.
    "process_resident_memory_bytes",
    "process_cpu_seconds",
    "python_info",
    "python_gc_collections",
}


class Gate:
    """A batch function held closed until released."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()

    def __call__(self, jobs: list[str]) -> list[str]:
        self.entered.set()
        self.open.wait(timeout=30)
        return jobs


def _scraped(telemetry: Telemetry) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """family name -> {(sample name, labels): value}, parsed from the text exposition."""
    text = generate_latest(telemetry.registry).decode()
    return {
        family.name: {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        for family in text_string_to_metric_families(text)
    }


def _result(index: int, *, final: bool, latency_ms: float = 0.0) -> StreamUpdate:
    return StreamUpdate(Result((), final, index, 0, 100, Tier.FAST, latency_ms), 0)


def _speech_started(index: int) -> StreamUpdate:
    return StreamUpdate(SpeechEvent(SpeechEventType.SPEECH_STARTED, 0, index), 0)


def test_every_metric_family_is_scraped() -> None:
    families = _scraped(Telemetry())
    missing = EXPECTED - set(families)
    assert not missing, f"not exposed: {sorted(missing)}"
    rss = families["process_resident_memory_bytes"][("process_resident_memory_bytes", ())]
    assert rss > 1 << 20


def test_readme_lists_every_voxwire_metric() -> None:
    # The README's Metrics section names each family as scraped (counters with _total).
    section = README.read_text().split("\n## Metrics", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(voxwire_[a-z0-9_]+)", section))
    exposed = set()
    for metric in Telemetry().registry.collect():
        if metric.name.startswith("voxwire_"):
            exposed.add(metric.name + ("_total" if metric.type == "counter" else ""))
    assert exposed - documented == set(), "add these to README.md's Metrics section"
    assert documented - exposed == set(), "README.md's Metrics section names metrics that do not exist"


async def test_decoder_queue_depth_wait_and_batch_size() -> None:
    telemetry = Telemetry()
    gate = Gate()
    worker: BatchWorker[str, str] = BatchWorker(gate, key=lambda j: j, max_batch=4, max_wait_s=0.0, name="t")
    telemetry.watch_decoder(worker)
    try:
        running = asyncio.create_task(worker.submit("a", priority=FINAL, deadline=0))
        await asyncio.to_thread(gate.entered.wait, 30)  # the worker is busy with "a"
        queued = [
            asyncio.create_task(worker.submit("b", priority=FINAL, deadline=1)),
            asyncio.create_task(worker.submit("b", priority=FINAL, deadline=1)),
            asyncio.create_task(worker.submit("p", priority=PARTIAL, deadline=1)),
        ]
        await asyncio.sleep(0)  # each task runs up to its wait on the worker
        depth = _scraped(telemetry)["voxwire_asr_decoder_queue_depth"]
        assert depth[("voxwire_asr_decoder_queue_depth", (("kind", "final"),))] == 2
        assert depth[("voxwire_asr_decoder_queue_depth", (("kind", "partial"),))] == 1
        gate.open.set()
        await asyncio.gather(running, *queued)
    finally:
        gate.open.set()
        worker.close()
    families = _scraped(telemetry)
    waits = families["voxwire_asr_decoder_queue_wait_seconds"]
    assert waits[("voxwire_asr_decoder_queue_wait_seconds_count", (("kind", "final"),))] == 3
    assert waits[("voxwire_asr_decoder_queue_wait_seconds_count", (("kind", "partial"),))] == 1
    sizes = families["voxwire_asr_decoder_batch_size"]
    # "a" alone, then the two "b" together, then the partial.
    assert sizes[("voxwire_asr_decoder_batch_size_count", (("kind", "final"),))] == 2
    assert sizes[("voxwire_asr_decoder_batch_size_sum", (("kind", "final"),))] == 3
    depth = families["voxwire_asr_decoder_queue_depth"]
    assert depth[("voxwire_asr_decoder_queue_depth", (("kind", "final"),))] == 0


def test_first_partial_is_timed_from_speech_started_once_per_utterance() -> None:
    telemetry = Telemetry()
    now = [0.0]
    observe = telemetry.stream_latencies(clock=lambda: now[0])
    now[0] = 10.0
    observe(_speech_started(0))
    now[0] = 10.75
    observe(_result(0, final=False))  # the first partial: 0.75 s
    now[0] = 11.5
    observe(_result(0, final=False))  # a later partial: not a first one
    observe(_result(0, final=True, latency_ms=120))
    observe(_speech_started(1))
    observe(_result(1, final=True, latency_ms=80))  # no partial in this utterance
    observe(_result(1, final=False))  # a stray partial after the final: not timed
    r = telemetry.registry
    assert r.get_sample_value("voxwire_asr_first_partial_latency_seconds_count") == 1
    assert r.get_sample_value("voxwire_asr_first_partial_latency_seconds_sum") == pytest.approx(0.75)
    assert r.get_sample_value("voxwire_asr_final_latency_seconds_count") == 2
    assert r.get_sample_value("voxwire_asr_final_latency_seconds_sum") == pytest.approx(0.2)


def test_latency_buckets_reach_minutes() -> None:
    telemetry = Telemetry()
    telemetry.final_latency.observe(90.0)
    telemetry.tts_first_audio.observe(90.0)
    r = telemetry.registry
    for name in ("voxwire_asr_final_latency_seconds", "voxwire_tts_first_audio_seconds"):
        # A 90 s latency lands in a finite bucket, not only in +Inf.
        assert r.get_sample_value(f"{name}_bucket", {"le": "120.0"}) == 1, name
        assert r.get_sample_value(f"{name}_bucket", {"le": "60.0"}) == 0, name


def _log_lines(log_format: str, emit: object) -> list[str]:
    stream = io.StringIO()
    logger = logging.getLogger(f"voxwire_server.test_observability.{log_format}")
    logger.handlers[:] = [log_handler(log_format, stream)]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    assert callable(emit)
    token = request_id.set("client-rid-42")
    try:
        emit(logger)
    finally:
        request_id.reset(token)
    return stream.getvalue().splitlines()


def test_json_logs_are_one_object_per_line_with_the_request_id() -> None:
    def emit(logger: logging.Logger) -> None:
        logger.info("stream %s opened", "s1")
        logger.warning('a message with\na newline and "quotes"')
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("decode failed")

    lines = _log_lines("json", emit)
    assert len(lines) == 3  # the newline inside a message stays escaped
    entries = [json.loads(line) for line in lines]
    assert entries[0]["message"] == "stream s1 opened"
    assert entries[0]["level"] == "INFO"
    assert entries[0]["logger"] == "voxwire_server.test_observability.json"
    assert {e["request_id"] for e in entries} == {"client-rid-42"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entries[0]["time"])
    assert entries[1]["message"] == 'a message with\na newline and "quotes"'
    assert "exception" not in entries[0]
    assert "ValueError: boom" in entries[2]["exception"]


def test_text_logs_carry_the_request_id() -> None:
    lines = _log_lines("text", lambda logger: logger.info("hello"))
    assert len(lines) == 1
    assert lines[0].endswith("INFO voxwire_server.test_observability.text [client-rid-42] hello")


def test_log_format_option() -> None:
    assert load_config([], environ={}).log_format == "text"
    assert load_config(["--log-format", "json"], environ={}).log_format == "json"
    assert load_config([], environ={"VOXWIRE_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(ConfigError, match="log_format"):
        load_config(["--log-format", "xml"], environ={})
