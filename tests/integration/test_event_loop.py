"""The event loop never runs audio work: every callback on the server's loop stays short.

Two checks. The known heavy steps (encoding synthesized audio, decoding compressed input, the
endpointer over a whole Recognize clip) are wrapped and must never run on the loop's thread. And
every callback (task step) the loop runs is timed in CPU time of the loop's thread, which waiting
for the GIL does not add to, so a busy machine cannot make a short callback look long while any
blocking work left on the loop (tens to hundreds of ms) shows.
"""

from __future__ import annotations

import asyncio
import io
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from tests.conftest import RunningServer, serve_in_thread
from voxwire import AudioEncoding, CachePolicy, Client, RecognitionConfig
from voxwire_server.config import ServerConfig
from voxwire_server.engines.audio import AudioEncoder, StreamDecoder
from voxwire_server.sessions import recognition

# The CPU guard's limit. The longest steps the server must run on its loop copy a reply of a few
# hundred KB a few times (join, cache pack, protobuf): 3-4 ms of CPU here, 7 ms seen once. Encoding
# a 5 s sentence to Opus on the loop took 43-170 ms; decoding a 16 KB Ogg/Opus chunk 5-9 ms and the
# endpointer over a 28 s clip 10-14 ms, which the wrapped steps catch whatever they cost.
LIMIT_S = 0.015
PARAGRAPH = (
    "The quick brown fox jumps over the lazy dog near the riverbank, while the evening sun sets slowly "
    "behind the distant purple mountains and the birds sing the last songs of the day."
)
TEMPLATE = "Coming up next on the radio is the song {song}."


@dataclass
class LoopClock:
    """CPU time of each callback the server's loop runs (those over LIMIT_S kept), and the threads
    the known heavy steps ran on."""

    loop: asyncio.AbstractEventLoop | None = None
    slow: list[tuple[float, str]] = field(default_factory=list)
    callbacks: int = 0
    heavy_on_loop: list[str] = field(default_factory=list)
    heavy_calls: int = 0

    def run(self, original: Callable[[asyncio.Handle], object], handle: asyncio.Handle) -> object:
        if self.loop is None or getattr(handle, "_loop", None) is not self.loop:
            return original(handle)
        started = time.thread_time()
        try:
            return original(handle)
        finally:
            self.callbacks += 1
            spent = time.thread_time() - started
            if spent > LIMIT_S:
                self.slow.append((spent, _where(handle)))

    def heavy(self, name: str, original: Callable[..., object]) -> Callable[..., object]:
        """original, noting whether it ran on the server's loop thread."""

        def call(*args: object, **kwargs: object) -> object:
            self.heavy_calls += 1
            if self.loop is not None and _running_loop() is self.loop:
                self.heavy_on_loop.append(name)
            return original(*args, **kwargs)

        return call


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _where(handle: asyncio.Handle) -> str:
    """The coroutine chain a task step ran (where it suspended next), or the callback."""
    task = getattr(getattr(handle, "_callback", None), "__self__", None)
    if not isinstance(task, asyncio.Task):
        return repr(handle)
    names = []
    coro = task.get_coro()
    while coro is not None and getattr(coro, "cr_code", None) is not None:
        names.append(coro.cr_code.co_name)
        coro = getattr(coro, "cr_await", None)
    return " > ".join(names)


@pytest.fixture(scope="module")
def timed_server() -> Iterator[tuple[RunningServer, LoopClock]]:
    clock = LoopClock()
    original_run = asyncio.events.Handle._run
    feed = StreamDecoder.feed

    def compressed_feed(decoder: StreamDecoder, data: bytes) -> object:
        if decoder.compressed:
            return clock.heavy("StreamDecoder.feed (compressed)", feed)(decoder, data)
        return feed(decoder, data)  # PCM samples only change type, on the loop by design

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(asyncio.events.Handle, "_run", lambda handle: clock.run(original_run, handle))
        patch.setattr(AudioEncoder, "encode", clock.heavy("AudioEncoder.encode", AudioEncoder.encode))
        patch.setattr(AudioEncoder, "finish", clock.heavy("AudioEncoder.finish", AudioEncoder.finish))
        patch.setattr(StreamDecoder, "feed", compressed_feed)
        patch.setattr(
            recognition, "_utterances", clock.heavy("endpointer over a clip", recognition._utterances)
        )
        handle = serve_in_thread(ServerConfig(listen="127.0.0.1:0", shutdown_grace_s=1.0))
        clock.loop = handle.running.loop
        try:
            yield handle.running, clock
        finally:
            handle.stop()


def check(clock: LoopClock) -> None:
    slow, clock.slow = clock.slow, []
    callbacks, clock.callbacks = clock.callbacks, 0
    on_loop, clock.heavy_on_loop = clock.heavy_on_loop, []
    calls, clock.heavy_calls = clock.heavy_calls, 0
    assert callbacks > 0
    assert not on_loop, f"ran on the event loop: {sorted(set(on_loop))}"
    assert calls > 0, "the workload reached none of the steps it checks"
    assert not slow, [f"{spent * 1000:.0f} ms CPU in {where}" for spent, where in slow]


@pytest.mark.parametrize(
    ("encoding", "rate"),
    [(AudioEncoding.OGG_OPUS, 48000), (AudioEncoding.WAV, 24000), (AudioEncoding.LINEAR16, 8000)],
)
def test_synthesis_encodes_off_the_loop(
    timed_server: tuple[RunningServer, LoopClock], encoding: AudioEncoding, rate: int
) -> None:
    server, clock = timed_server
    with Client(server.target, timeout_s=120) as client:
        client.synthesize(PARAGRAPH, encoding=encoding, sample_rate_hz=rate, cache_policy=CachePolicy.BYPASS)
        chunks = list(
            client.synthesize_stream(f"{PARAGRAPH} {PARAGRAPH}", encoding=encoding, sample_rate_hz=rate)
        )
        assert len(chunks) >= 2
    check(clock)


def test_stitched_template_replies_encode_off_the_loop(timed_server: tuple[RunningServer, LoopClock]) -> None:
    server, clock = timed_server
    opus = {"encoding": AudioEncoding.OGG_OPUS, "sample_rate_hz": 48000}
    entities = {"song": "Hotel California by the Eagles"}
    with Client(server.target, timeout_s=120) as client:
        client.warmup(templates=[TEMPLATE], **opus)  # type: ignore[arg-type]
        client.synthesize(template=TEMPLATE, entities=entities, user_id="a", **opus)  # type: ignore[arg-type]
        chunks = list(client.synthesize_stream(template=TEMPLATE, entities=entities, user_id="b", **opus))  # type: ignore[arg-type]
        assert chunks[0].cache_status.value == "stitched"  # the cached prefix, encoded for this reply
    check(clock)


def _speech(client: Client, seconds: float) -> bytes:
    """That much 16 kHz speech (readings of the paragraph with pauses), from the server's voice."""
    wav = client.synthesize(PARAGRAPH, sample_rate_hz=16000, cache_policy=CachePolicy.BYPASS).audio
    with wave.open(io.BytesIO(wav), "rb") as w:
        reading = w.readframes(w.getnframes()) + b"\x00\x00" * 16000
    return (reading * (1 + int(seconds * 32000) // len(reading)))[: int(seconds * 32000)]


def test_recognize_cuts_a_clip_into_utterances_off_the_loop(
    timed_server: tuple[RunningServer, LoopClock],
) -> None:
    server, clock = timed_server
    with Client(server.target, timeout_s=120) as client:
        pcm = _speech(client, 28.0)  # as long as Recognize cuts into utterances itself
        check(clock)
        transcript = client.recognize(
            pcm, RecognitionConfig(encoding=AudioEncoding.LINEAR16, sample_rate_hz=16000)
        )
        assert "fox" in transcript.text.lower()
    check(clock)


def test_streamed_compressed_input_is_decoded_off_the_loop(
    timed_server: tuple[RunningServer, LoopClock],
) -> None:
    server, clock = timed_server
    with Client(server.target, timeout_s=120) as client:
        opus = client.synthesize(PARAGRAPH, encoding=AudioEncoding.OGG_OPUS, sample_rate_hz=48000).audio
        check(clock)
        chunks = [opus[i : i + 16000] for i in range(0, len(opus), 16000)]
        updates = list(client.stream(chunks, RecognitionConfig(encoding=AudioEncoding.OGG_OPUS)))
        text = " ".join(u.result.transcript for u in updates if u.result and u.result.is_final)
        assert "fox" in text.lower()
    check(clock)
