"""The blocking client: :class:`Client`."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Protocol, Self, cast

import grpc

from voxwire import _convert
from voxwire._convert import AudioInput
from voxwire._resume import ResumePolicy, StreamResume
from voxwire.audio import paced
from voxwire.errors import VoxwireError, from_rpc_error
from voxwire.types import (
    AudioEncoding,
    CachePolicy,
    RecognitionConfig,
    ServerStats,
    StreamUpdate,
    SynthesisChunk,
    SynthesisResult,
    Tls,
    Transcript,
    Voice,
)
from voxwire.v1 import (
    cache_admin_pb2,
    cache_admin_pb2_grpc,
    recognizer_pb2,
    recognizer_pb2_grpc,
    synthesizer_pb2,
    synthesizer_pb2_grpc,
)

__all__ = ["Client"]

StreamSource = AudioInput | Iterable[bytes]


class _Cancellable(Protocol):
    def cancel(self) -> bool: ...

    def done(self) -> bool: ...


class Client:
    """A blocking client of a voxwire server.

    Use it as a context manager, or call :meth:`close` when done::

        with Client("127.0.0.1:50051") as client:
            print(client.recognize("hello.wav").text)

    Failed RPCs raise a :class:`voxwire.errors.VoxwireError` subclass. A client may be shared by
    threads.

    Args:
        target: ``host:port`` of the server.
        timeout_s: default deadline of unary calls in seconds; None means no deadline. Streams get
            no deadline unless one is passed to the call.
        channel_options: extra gRPC channel options, e.g. ``[("grpc.keepalive_time_ms", 10000)]``;
            requests have no size limit here (the server answers OUT_OF_RANGE beyond its own) and
            replies may be up to 256 MiB.
        api_key: the API key, sent with every call as ``authorization: Bearer <key>`` (a server
            with authentication on refuses calls without one: UNAUTHENTICATED).
        tls: connect over TLS (:class:`voxwire.Tls`; ``Tls()`` trusts the system's roots); None
            connects in plaintext.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        timeout_s: float | None = None,
        channel_options: Sequence[tuple[str, int | str]] = (),
        api_key: str | None = None,
        tls: Tls | None = None,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        options = _convert.channel_options(channel_options, tls)
        if tls is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(target, _convert.channel_credentials(tls), options=options)
        self._metadata = _convert.auth_metadata(api_key)
        self._recognizer = recognizer_pb2_grpc.RecognizerStub(self._channel)
        self._synthesizer = synthesizer_pb2_grpc.SynthesizerStub(self._channel)
        self._admin = cache_admin_pb2_grpc.CacheAdminStub(self._channel)
        self._closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel, cancelling calls still in flight. The client cannot be used afterwards."""
        if not self._closed:
            self._closed = True
            self._channel.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the client is closed")

    def _deadline(self, timeout_s: float | None) -> float | None:
        self._check_open()
        return self.timeout_s if timeout_s is None else timeout_s

    def recognize(
        self, audio: AudioInput, config: RecognitionConfig | None = None, *, timeout_s: float | None = None
    ) -> Transcript:
        """Transcribes one whole clip.

        Args:
            audio: a path (``.wav``, ``.flac``, ``.ogg``/``.opus``, ``.raw``/``.pcm``) or encoded
                bytes. A file's encoding, sample rate and channels fill the config's unset fields;
                bytes need ``config.encoding`` (and ``sample_rate_hz`` for LINEAR16).
            config: recognition options; defaults to ``RecognitionConfig()``.
            timeout_s: deadline for this call; None uses the client's.

        Raises:
            ValueError: the audio and config do not fit together.
            OSError: the file cannot be read.
            VoxwireError: the RPC failed.
        """
        deadline = self._deadline(timeout_s)
        af, full_config = _convert.load_audio(audio, config)
        request = recognizer_pb2.RecognizeRequest(
            config=_convert.recognition_config_to_pb(full_config), audio=af.data
        )
        try:
            response = self._recognizer.Recognize(request, timeout=deadline, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return _convert.transcript_from_pb(response)

    def stream(
        self,
        source: StreamSource,
        config: RecognitionConfig | None = None,
        *,
        chunk_ms: int = 100,
        realtime: bool = False,
        stream_id: str = "",
        resume_token: bytes = b"",
        timeout_s: float | None = None,
        resume_attempts: int = 5,
        rollover_s: float | None = None,
    ) -> Generator[StreamUpdate, None, None]:
        """Streams audio to the recognizer and yields its results and speech events as they come.

        Sends the config, then the audio, then always an end-of-audio marker (which asks the
        server for the last final); the iteration ends when the server closes the stream. The
        call starts when iteration starts. Stopping early (``break``, ``close()``) cancels the
        call; wrap the iterator in ``contextlib.closing`` to have that happen at once.

        A resumable stream survives its server: when the call fails with UNAVAILABLE (a lost
        connection, a server killed or shutting down), the client reconnects to the same target
        (behind a load balancer, perhaps another replica), resumes the stream with its latest
        resume token and sends again the audio the server's stored state does not cover (the
        client keeps that much). The iteration goes on as one stream: no result is yielded twice.

        Args:
            source: a path or bytes (sent in ``chunk_ms`` pieces; WAV is sent as LINEAR16 PCM), or
                an iterable of encoded chunks (``config.encoding`` required), which is read on a
                thread of its own, so it may block (e.g. a microphone).
            config: recognition options, e.g. ``interim_results=True``.
            chunk_ms: audio per message for a path or bytes source.
            realtime: send a path or bytes source no faster than real time.
            stream_id: the stream's id; the server assigns one when empty.
            resume_token: resume by hand a stream from a token of its :class:`StreamUpdate`: the
                first update then has ``resumed`` set, and ``source`` must be the stream's audio
                from that update's ``resume_offset_bytes`` on (it is read only after it).
            timeout_s: deadline for the whole stream, resumes included; None means none.
            resume_attempts: resumes tried in a row before the error is raised (0: never resume).
            rollover_s: move a resumable stream to a new call after this long on one (for servers
                that limit how long one call may last); None: never.

        Raises:
            ValueError, OSError: bad arguments or an unreadable file (raised here).
            VoxwireError: the RPC failed (raised while iterating); an exception raised by the
                source iterable is re-raised as it is.
        """
        self._check_open()
        _convert.check_stream_args(source, config, chunk_ms, realtime)
        policy = ResumePolicy(attempts=resume_attempts, rollover_s=rollover_s)
        audio: Iterable[bytes]
        if isinstance(source, str | os.PathLike | bytes | bytearray | memoryview):
            config, chunks, interval = _convert.plan_whole_audio(source, config, chunk_ms, realtime)
            audio = paced(chunks, interval) if interval is not None else chunks
        else:
            audio = source
        return self._stream(config or RecognitionConfig(), stream_id, resume_token, audio, timeout_s, policy)

    def _stream(
        self,
        config: RecognitionConfig,
        stream_id: str,
        resume_token: bytes,
        audio: Iterable[bytes],
        timeout_s: float | None,
        policy: ResumePolicy,
    ) -> Generator[StreamUpdate, None, None]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        resume = StreamResume(resume_token)
        feed = _Feed(audio, resume)
        calls, attempt = 0, 0
        error: VoxwireError | None = None
        rolled_over = False
        try:
            while True:
                if error is not None and not rolled_over:
                    self._reconnected(policy, deadline, error)
                resuming = bool(resume.token) and (calls > 0 or bool(resume_token))
                head = _convert.stream_head(config, stream_id, resume.token if resuming else b"")
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                # A call that failed before the server said anything starts again, all of it.
                control = _CallControl(resume, feed, resuming or calls > 0)
                if not resuming and calls > 0:
                    control.resumed_at(0)
                requests = _requests(head, feed, resume, control)
                call = self._recognizer.StreamingRecognize(requests, timeout=left, metadata=self._metadata)
                calls += 1
                control.attach(cast(_Cancellable, call), policy.rollover_s)
                again = False
                try:
                    for response in call:
                        update = _convert.stream_update_from_pb(response)
                        if update.resumed:
                            attempt = 0
                            if calls == 1:
                                # Resumed by hand: the caller's source starts where the state ends.
                                resume.start_at(update.resume_offset_bytes)
                            control.resumed_at(update.resume_offset_bytes)
                            resume.observe(update)
                            if calls == 1:
                                yield update
                            continue
                        if resume.observe(update):
                            yield update
                except grpc.RpcError as exc:
                    if control.failures:
                        raise control.failures[0] from None
                    if not control.rolled:
                        error = from_rpc_error(exc)
                        if not (resume.may_go_on(error) and attempt < policy.attempts):
                            raise error from exc
                        attempt += 1
                    again = True
                finally:
                    control.finish()
                if not again:
                    if control.failures:
                        raise control.failures[0]
                    return
                rolled_over = control.rolled
                if not rolled_over:
                    time.sleep(policy.delay_s(attempt))
        finally:
            feed.close()

    def _reconnected(self, policy: ResumePolicy, deadline: float | None, error: VoxwireError) -> None:
        """Waits for the channel to connect again before a resume; raises ``error`` when it does not
        within connect_timeout_s (or the stream's deadline)."""
        wait_s = policy.connect_timeout_s
        if deadline is not None:
            wait_s = min(wait_s, deadline - time.monotonic())
        if wait_s <= 0:
            raise error
        ready = grpc.channel_ready_future(self._channel)
        try:
            ready.result(timeout=wait_s)
        except grpc.FutureTimeoutError:
            raise error from None
        finally:
            ready.cancel()

    def synthesize(
        self,
        text: str | None = None,
        *,
        ssml: str | None = None,
        template: str | None = None,
        entities: Mapping[str, str] | None = None,
        voice: str = "",
        speaking_rate: float = 1.0,
        encoding: AudioEncoding = AudioEncoding.WAV,
        sample_rate_hz: int = 0,
        tenant_id: str = "",
        user_id: str = "",
        cache_policy: CachePolicy = CachePolicy.USE,
        request_id: str = "",
        timeout_s: float | None = None,
    ) -> SynthesisResult:
        """Synthesizes a whole utterance.

        Give exactly one of ``text``, ``ssml`` or ``template`` (a phrase with ``{slot}`` names,
        filled from ``entities``; its fixed parts can be served from the cache).

        Args:
            voice: a voice name from :meth:`list_voices`; "" is the server's default.
            speaking_rate: 1.0 is the voice's natural pace (0.5 to 2.0).
            encoding: WAV (a complete file), LINEAR16 (raw samples) or OGG_OPUS.
            sample_rate_hz: output rate; 0 is the voice's native rate.
            tenant_id, user_id, cache_policy, request_id: who the request is for and how it may
                use the caches.
            timeout_s: deadline for this call; None uses the client's.

        Raises:
            ValueError: not exactly one input, or entities without a template.
            VoxwireError: the RPC failed.
        """
        deadline = self._deadline(timeout_s)
        request = _convert.synthesize_request(
            text=text,
            ssml=ssml,
            template=template,
            entities=entities,
            voice=voice,
            speaking_rate=speaking_rate,
            encoding=encoding,
            sample_rate_hz=sample_rate_hz,
            tenant_id=tenant_id,
            user_id=user_id,
            cache_policy=cache_policy,
            request_id=request_id,
        )
        try:
            response = self._synthesizer.Synthesize(request, timeout=deadline, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return _convert.synthesis_result_from_pb(response, encoding)

    def synthesize_stream(
        self,
        text: str | None = None,
        *,
        ssml: str | None = None,
        template: str | None = None,
        entities: Mapping[str, str] | None = None,
        voice: str = "",
        speaking_rate: float = 1.0,
        encoding: AudioEncoding = AudioEncoding.WAV,
        sample_rate_hz: int = 0,
        tenant_id: str = "",
        user_id: str = "",
        cache_policy: CachePolicy = CachePolicy.USE,
        request_id: str = "",
        timeout_s: float | None = None,
    ) -> Generator[SynthesisChunk, None, None]:
        """Synthesizes an utterance and yields its audio as it is produced (arguments as :meth:`synthesize`).

        For WAV the first chunk starts with a header of unknown sizes; the joined chunks are a
        streamable WAV file (:func:`voxwire.audio.finalize_streamed_wav` fills in the sizes).
        Stopping early cancels the call. ``timeout_s`` is a deadline for the whole stream; None
        means none.

        Raises:
            ValueError: not exactly one input (raised here); VoxwireError: the RPC failed.
        """
        self._check_open()
        request = _convert.synthesize_request(
            text=text,
            ssml=ssml,
            template=template,
            entities=entities,
            voice=voice,
            speaking_rate=speaking_rate,
            encoding=encoding,
            sample_rate_hz=sample_rate_hz,
            tenant_id=tenant_id,
            user_id=user_id,
            cache_policy=cache_policy,
            request_id=request_id,
        )
        return self._synthesize_stream(request, encoding, timeout_s)

    def _synthesize_stream(
        self, request: synthesizer_pb2.SynthesizeRequest, encoding: AudioEncoding, timeout_s: float | None
    ) -> Generator[SynthesisChunk, None, None]:
        call = self._synthesizer.SynthesizeStream(request, timeout=timeout_s, metadata=self._metadata)
        try:
            for chunk in call:
                yield _convert.synthesis_chunk_from_pb(chunk, encoding)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            cast(_Cancellable, call).cancel()

    def list_voices(self, language: str = "", *, timeout_s: float | None = None) -> list[Voice]:
        """The voices the server offers, optionally only those whose language starts with ``language``."""
        deadline = self._deadline(timeout_s)
        try:
            response = self._synthesizer.ListVoices(
                synthesizer_pb2.ListVoicesRequest(language=language),
                timeout=deadline,
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return _convert.voices_from_pb(response)

    def stats(self, tenant_id: str = "", *, timeout_s: float | None = None) -> ServerStats:
        """Cache and request counters of the server, with the recognition cache's rows per tier and
        tenant (an operator's call). ``tenant_id`` narrows them to that tenant's rows."""
        deadline = self._deadline(timeout_s)
        try:
            response = self._admin.GetStats(
                cache_admin_pb2.GetStatsRequest(tenant_id=tenant_id),
                timeout=deadline,
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return _convert.stats_from_pb(response)

    def purge_user(self, tenant_id: str, user_id: str, *, timeout_s: float | None = None) -> int:
        """Removes every cache entry of one user of one tenant; returns how many entries went."""
        deadline = self._deadline(timeout_s)
        request = cache_admin_pb2.PurgeUserRequest(tenant_id=tenant_id, user_id=user_id)
        try:
            response = self._admin.PurgeUser(request, timeout=deadline, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return response.entries_removed

    def warmup(
        self,
        phrases: Iterable[str] = (),
        templates: Iterable[str] = (),
        voice: str = "",
        *,
        speaking_rate: float = 1.0,
        encoding: AudioEncoding = AudioEncoding.WAV,
        sample_rate_hz: int = 0,
        timeout_s: float | None = None,
    ) -> tuple[int, int]:
        """Precomputes phrases and template prefixes into the global synthesis cache.

        Returns:
            (phrases cached, templates cached).
        """
        deadline = self._deadline(timeout_s)
        request = _convert.warmup_request(phrases, templates, voice, speaking_rate, encoding, sample_rate_hz)
        try:
            response = self._admin.Warmup(request, timeout=deadline, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return response.phrases_cached, response.templates_cached

    def submit_correction(
        self,
        audio: AudioInput | None,
        corrected_transcript: str,
        *,
        cache_key: str = "",
        language: str = "",
        encoding: AudioEncoding | None = None,
        sample_rate_hz: int | None = None,
        tenant_id: str = "",
        user_id: str = "",
        request_id: str = "",
        timeout_s: float | None = None,
    ) -> bool:
        """Tells the server the right transcript of an utterance it got wrong: later matching audio of
        the tenant is answered with it (``CacheStatus.CORRECTION``). Returns whether it was accepted.

        ``audio`` is the utterance as a path, or bytes in ``encoding`` (with ``sample_rate_hz`` for
        LINEAR16); or pass None and the ``cache_key`` of the final that was wrong. Servers without
        the correction tier answer :class:`~voxwire.errors.UnimplementedError`.
        """
        deadline = self._deadline(timeout_s)
        af = None
        if audio is not None:
            af, _ = _convert.load_audio(
                audio, RecognitionConfig(encoding=encoding, sample_rate_hz=sample_rate_hz)
            )
        request = _convert.correction_request(
            af, corrected_transcript, tenant_id, user_id, request_id, cache_key, language
        )
        try:
            response = self._admin.SubmitCorrection(request, timeout=deadline, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return response.accepted

    def health(self, service: str = "", *, timeout_s: float | None = None) -> str:
        """The server's health (grpc.health.v1): "SERVING", "NOT_SERVING" or "SERVICE_UNKNOWN".

        ``service`` is "" for the whole server or a service name such as "voxwire.v1.Recognizer".
        Needs the grpcio-health-checking package (ImportError otherwise).
        """
        deadline = self._deadline(timeout_s)
        health_pb2, health_pb2_grpc = _convert.health_modules()
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            response = stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=deadline, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise from_rpc_error(exc) from exc
        return _convert.health_status_name(health_pb2, response.status)


class _SourceEnd:
    """The end of the source (or its failure, re-raised on the caller's thread)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error


# Chunks read ahead of the calls: enough that a reconnect does not stall a real-time source.
_FEED_CHUNKS = 64
_POLL_S = 0.05


class _Feed:
    """Reads the source on a thread of its own, for all the calls of one stream: a call that ends
    while the source blocks (a microphone) leaves the chunk to the next call."""

    def __init__(self, audio: Iterable[bytes], resume: StreamResume) -> None:
        self._audio = audio
        self._resume = resume
        self._queue: queue.Queue[bytes | _SourceEnd] = queue.Queue(_FEED_CHUNKS)
        self.lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, stop: threading.Event) -> bytes | _SourceEnd | None:
        """The next chunk (recorded for resumes), or None once ``stop`` is set. A call's request
        thread may outlive its call: ``stop`` is set under ``lock``, so what it takes is recorded
        before the next call replays, and nothing after."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._pump, name="voxwire-stream-source", daemon=True)
            self._thread.start()
        while True:
            # One taker at a time, the wait included: chunks keep their order across calls.
            with self.lock:
                if stop.is_set():
                    return None
                try:
                    return self._taken(self._queue.get(timeout=_POLL_S))
                except queue.Empty:
                    continue

    def _taken(self, item: bytes | _SourceEnd) -> bytes | _SourceEnd:
        if isinstance(item, bytes):
            # Kept before it is sent: a call that fails meanwhile leaves it to the next one.
            self._resume.record(item)
        else:
            # Under the lock, like the recording: the next call knows at once that it is over.
            self._resume.source_done = True
        return item

    def _pump(self) -> None:
        try:
            for chunk in self._audio:
                if chunk and not self._put(chunk):
                    return
        except Exception as exc:
            self._put(_SourceEnd(exc))
            return
        self._put(_SourceEnd())

    def _put(self, item: bytes | _SourceEnd) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def close(self) -> None:
        self._closed.set()


class _CallControl:
    """One call of a stream: where its resume starts, its rollover, its source failure."""

    def __init__(self, resume: StreamResume, feed: _Feed, resuming: bool) -> None:
        self.resume = resume
        self._feed = feed
        self.resuming = resuming
        self.failures: list[Exception] = []
        self.rolled = False
        self.stop = threading.Event()
        self._offset: int | None = None
        self._offset_ready = threading.Event()
        self._call: _Cancellable | None = None
        self._timer: threading.Timer | None = None

    def attach(self, call: _Cancellable, rollover_s: float | None) -> None:
        self._call = call
        if rollover_s is not None:
            self._timer = threading.Timer(rollover_s, self._roll)
            self._timer.daemon = True
            self._timer.start()

    def _roll(self) -> None:
        call = self._call
        if call is None or call.done():
            return
        if self.resume.resumable and not self.resume.source_done:
            self.rolled = True
            call.cancel()

    def resumed_at(self, offset: int) -> None:
        self._offset = offset
        self._offset_ready.set()

    def wait_offset(self) -> int | None:
        while not self.stop.is_set():
            if self._offset_ready.wait(_POLL_S):
                return self._offset
        return None

    def cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()

    def finish(self) -> None:
        with self._feed.lock:
            self.stop.set()
        if self._timer is not None:
            self._timer.cancel()
        self.cancel()


def _requests(
    head: recognizer_pb2.StreamingRecognizeRequest, feed: _Feed, resume: StreamResume, control: _CallControl
) -> Iterator[recognizer_pb2.StreamingRecognizeRequest]:
    # Runs on a gRPC thread. A failing source is recorded for the caller's thread to re-raise and
    # the call is cancelled; ending without end_of_audio abandons the stream should cancel come
    # too early. A resumed call first waits for the server to say where its state ends.
    yield head
    if control.resuming:
        offset = control.wait_offset()
        if offset is None:
            return
        try:
            replay = resume.replay(offset)
        except Exception as exc:
            control.failures.append(exc)
            control.cancel()
            return
        for chunk in replay:
            yield _convert.audio_message(chunk)
    while not resume.source_done:
        item = feed.get(control.stop)
        if item is None:
            return
        if isinstance(item, _SourceEnd):
            if item.error is not None:
                control.failures.append(item.error)
                control.cancel()
                return
            break
        yield _convert.audio_message(item)
    yield _convert.END_OF_AUDIO
