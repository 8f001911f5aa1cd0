"""The asyncio client: :class:`AsyncClient`."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Self

import grpc
import grpc.aio

from voxwire import _convert
from voxwire._convert import AudioInput
from voxwire._resume import ResumePolicy, StreamResume
from voxwire.audio import apaced
from voxwire.errors import VoxwireError, _AioStreamStatus, from_rpc_error
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

__all__ = ["AsyncClient"]

StreamSource = AudioInput | Iterable[bytes] | AsyncIterable[bytes]
_StreamCall = grpc.aio.StreamStreamCall[
    recognizer_pb2.StreamingRecognizeRequest, recognizer_pb2.StreamingRecognizeResponse
]


class _Stubs:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.recognizer = recognizer_pb2_grpc.RecognizerStub(channel)
        self.synthesizer = synthesizer_pb2_grpc.SynthesizerStub(channel)
        self.admin = cache_admin_pb2_grpc.CacheAdminStub(channel)


class AsyncClient:
    """An asyncio client of a voxwire server.

    Use it as an async context manager, or call :meth:`aclose` when done::

        async with AsyncClient("127.0.0.1:50051") as client:
            transcript = await client.recognize("hello.wav")
            print(transcript.text)

    The channel is opened on first use, in the running event loop. Failed RPCs raise a
    :class:`voxwire.errors.VoxwireError` subclass.

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
        self._options = _convert.channel_options(channel_options, tls)
        self._credentials = _convert.channel_credentials(tls) if tls is not None else None
        self._metadata = _convert.auth_metadata(api_key)
        self._channel: grpc.aio.Channel | None = None
        self._stubs: _Stubs | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the channel, cancelling calls still in flight. The client cannot be used afterwards."""
        self._closed = True
        channel, self._channel, self._stubs = self._channel, None, None
        if channel is not None:
            await channel.close(None)

    def _open(self) -> _Stubs:
        # The channel binds to the running event loop, so it is made on first use, not in __init__.
        if self._closed:
            raise RuntimeError("the client is closed")
        if self._stubs is None:
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(self.target, options=self._options)
            else:
                channel = grpc.aio.secure_channel(self.target, self._credentials, options=self._options)
            self._channel, self._stubs = channel, _Stubs(channel)
        return self._stubs

    def _recognizer(self) -> recognizer_pb2_grpc.RecognizerAsyncStub:
        return self._open().recognizer

    def _synthesizer(self) -> synthesizer_pb2_grpc.SynthesizerAsyncStub:
        return self._open().synthesizer

    def _admin(self) -> cache_admin_pb2_grpc.CacheAdminAsyncStub:
        return self._open().admin

    def _deadline(self, timeout_s: float | None) -> float | None:
        return self.timeout_s if timeout_s is None else timeout_s

    async def recognize(
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
        af, full_config = await asyncio.to_thread(_convert.load_audio, audio, config)
        request = recognizer_pb2.RecognizeRequest(
            config=_convert.recognition_config_to_pb(full_config), audio=af.data
        )
        try:
            response = await self._recognizer().Recognize(
                request, timeout=self._deadline(timeout_s), metadata=self._metadata
            )
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
    ) -> AsyncGenerator[StreamUpdate, None]:
        """Streams audio to the recognizer and yields its results and speech events as they come.

        Sends the config, then the audio, then always an end-of-audio marker (which asks the
        server for the last final); the iteration ends when the server closes the stream.
        Stopping early (``break``, ``aclose()``, cancellation) cancels the call; wrap the iterator
        in ``contextlib.aclosing`` to have that happen at once rather than when it is collected.

        A resumable stream survives its server: when the call fails with UNAVAILABLE (a lost
        connection, a server killed or shutting down), the client reconnects to the same target
        (behind a load balancer, perhaps another replica), resumes the stream with its latest
        resume token and sends again the audio the server's stored state does not cover (the
        client keeps that much). The iteration goes on as one stream: no result is yielded twice.

        Args:
            source: a path or bytes (sent in ``chunk_ms`` pieces; WAV is sent as LINEAR16 PCM), or
                an iterable or async iterable of encoded chunks (``config.encoding`` required). A
                plain iterable that is not a list or tuple is read in a worker thread, so it may
                block (e.g. a microphone).
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
            ValueError: bad arguments (raised here, before any I/O).
            VoxwireError: the RPC failed (raised while iterating); an exception raised by the
                source iterable is re-raised as it is.
        """
        _convert.check_stream_args(source, config, chunk_ms, realtime)
        policy = ResumePolicy(attempts=resume_attempts, rollover_s=rollover_s)
        return self._stream(source, config, chunk_ms, realtime, stream_id, resume_token, timeout_s, policy)

    async def _stream(
        self,
        source: StreamSource,
        config: RecognitionConfig | None,
        chunk_ms: int,
        realtime: bool,
        stream_id: str,
        resume_token: bytes,
        timeout_s: float | None,
        policy: ResumePolicy,
    ) -> AsyncGenerator[StreamUpdate, None]:
        audio: AsyncGenerator[bytes, None]
        if isinstance(source, str | os.PathLike | bytes | bytearray | memoryview):
            config, chunks, interval = await asyncio.to_thread(
                _convert.plan_whole_audio, source, config, chunk_ms, realtime
            )
            audio = apaced(chunks, interval) if interval is not None else _chunks(chunks)
        else:
            audio = _chunks(source)
        config = config or RecognitionConfig()
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        resume = StreamResume(resume_token)
        # One reader of the source for all the calls of the stream: a call that fails never takes
        # the source down with it.
        feed: asyncio.Queue[bytes | _SourceEnd] = asyncio.Queue(_FEED_CHUNKS)
        # A stream resumed by hand reads its source only once the server has said where it resumes.
        pump = None if resume_token else asyncio.create_task(_pump(audio, feed))
        calls, attempt = 0, 0
        error: VoxwireError | None = None
        rolled_over = False
        try:
            while True:
                if error is not None and not rolled_over:
                    await self._reconnected(policy, deadline, error)
                resuming = bool(resume.token) and (calls > 0 or bool(resume_token))
                head = _convert.stream_head(config, stream_id, resume.token if resuming else b"")
                left = None if deadline is None else max(0.0, deadline - loop.time())
                call = self._recognizer().StreamingRecognize(None, timeout=left, metadata=self._metadata)
                calls += 1
                status = _AioStreamStatus()
                call.add_done_callback(status)
                offset: asyncio.Future[int] | None = None
                if resuming:
                    offset = loop.create_future()
                elif calls > 1:
                    # The call before failed before the server said anything: start again, all of it.
                    offset = loop.create_future()
                    offset.set_result(0)
                writer = asyncio.create_task(_write_requests(call, head, feed, resume, offset))
                rolled = _Rollover(call, resume, policy.rollover_s)
                responses = aiter(call)
                again = False
                try:
                    while True:
                        try:
                            response = await anext(responses)
                        except StopAsyncIteration:
                            break
                        except grpc.RpcError as exc:
                            failure = _failure(writer)
                            if failure is not None:
                                raise failure from exc
                            error = await status.error(call, exc)
                            if not (resume.may_go_on(error) and attempt < policy.attempts):
                                raise error from exc
                            attempt += 1
                            again = True
                            break
                        except asyncio.CancelledError:
                            failure = _failure(writer)
                            task = asyncio.current_task()
                            if task is not None and task.cancelling():
                                raise
                            if failure is not None:
                                raise failure from None
                            if not rolled.fired:
                                raise
                            again = True
                            break
                        update = _convert.stream_update_from_pb(response)
                        if update.resumed:
                            attempt = 0
                            if calls == 1:
                                # Resumed by hand: the caller's source starts where the state ends.
                                resume.start_at(update.resume_offset_bytes)
                                if pump is None:
                                    pump = asyncio.create_task(_pump(audio, feed))
                            if offset is not None and not offset.done():
                                offset.set_result(update.resume_offset_bytes)
                            resume.observe(update)
                            if calls == 1:
                                yield update
                            continue
                        if resume.observe(update):
                            yield update
                    if not again:
                        # The server ended the stream; a writer still waiting on the source is
                        # cancelled below.
                        failure = _failure(writer)
                        if failure is not None:
                            raise failure
                        return
                finally:
                    rolled.cancel()
                    call.cancel()
                    writer.cancel()
                    await asyncio.wait([writer])
                    _failure(writer)  # retrieved, so asyncio does not log it as never retrieved
                rolled_over = rolled.fired
                if not rolled_over:
                    await asyncio.sleep(policy.delay_s(attempt))
        finally:
            if pump is not None:
                pump.cancel()
                await asyncio.wait([pump])
            else:
                await audio.aclose()

    async def _reconnected(self, policy: ResumePolicy, deadline: float | None, error: VoxwireError) -> None:
        """Waits for the channel to connect again before a resume; raises ``error`` when it does not
        within connect_timeout_s (or the stream's deadline)."""
        wait_s = policy.connect_timeout_s
        if deadline is not None:
            wait_s = min(wait_s, deadline - asyncio.get_running_loop().time())
        try:
            if wait_s <= 0:
                raise TimeoutError
            await asyncio.wait_for(self._open().channel.channel_ready(), wait_s)
        except TimeoutError:
            raise error from None

    async def synthesize(
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
            response = await self._synthesizer().Synthesize(
                request, timeout=self._deadline(timeout_s), metadata=self._metadata
            )
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
    ) -> AsyncGenerator[SynthesisChunk, None]:
        """Synthesizes an utterance and yields its audio as it is produced (arguments as :meth:`synthesize`).

        For WAV the first chunk starts with a header of unknown sizes; the joined chunks are a
        streamable WAV file (:func:`voxwire.audio.finalize_streamed_wav` fills in the sizes).
        Stopping early cancels the call. ``timeout_s`` is a deadline for the whole stream; None
        means none.

        Raises:
            ValueError: not exactly one input (raised here); VoxwireError: the RPC failed.
        """
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

    async def _synthesize_stream(
        self, request: synthesizer_pb2.SynthesizeRequest, encoding: AudioEncoding, timeout_s: float | None
    ) -> AsyncGenerator[SynthesisChunk, None]:
        call = self._synthesizer().SynthesizeStream(request, timeout=timeout_s, metadata=self._metadata)
        try:
            async for chunk in call:
                yield _convert.synthesis_chunk_from_pb(chunk, encoding)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            call.cancel()

    async def list_voices(self, language: str = "", *, timeout_s: float | None = None) -> list[Voice]:
        """The voices the server offers, optionally only those whose language starts with ``language``."""
        request = synthesizer_pb2.ListVoicesRequest(language=language)
        try:
            response = await self._synthesizer().ListVoices(
                request, timeout=self._deadline(timeout_s), metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return _convert.voices_from_pb(response)

    async def stats(self, tenant_id: str = "", *, timeout_s: float | None = None) -> ServerStats:
        """Cache and request counters of the server, with the recognition cache's rows per tier and
        tenant (an operator's call). ``tenant_id`` narrows them to that tenant's rows."""
        request = cache_admin_pb2.GetStatsRequest(tenant_id=tenant_id)
        try:
            response = await self._admin().GetStats(
                request, timeout=self._deadline(timeout_s), metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return _convert.stats_from_pb(response)

    async def purge_user(self, tenant_id: str, user_id: str, *, timeout_s: float | None = None) -> int:
        """Removes every cache entry of one user of one tenant; returns how many entries went."""
        request = cache_admin_pb2.PurgeUserRequest(tenant_id=tenant_id, user_id=user_id)
        try:
            response = await self._admin().PurgeUser(
                request, timeout=self._deadline(timeout_s), metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return response.entries_removed

    async def warmup(
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
        request = _convert.warmup_request(phrases, templates, voice, speaking_rate, encoding, sample_rate_hz)
        try:
            response = await self._admin().Warmup(
                request, timeout=self._deadline(timeout_s), metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return response.phrases_cached, response.templates_cached

    async def submit_correction(
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
        config = RecognitionConfig(encoding=encoding, sample_rate_hz=sample_rate_hz)
        af = None
        if audio is not None:
            af, _ = await asyncio.to_thread(_convert.load_audio, audio, config)
        request = _convert.correction_request(
            af, corrected_transcript, tenant_id, user_id, request_id, cache_key, language
        )
        try:
            response = await self._admin().SubmitCorrection(
                request, timeout=self._deadline(timeout_s), metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return response.accepted

    async def health(self, service: str = "", *, timeout_s: float | None = None) -> str:
        """The server's health (grpc.health.v1): "SERVING", "NOT_SERVING" or "SERVICE_UNKNOWN".

        ``service`` is "" for the whole server or a service name such as "voxwire.v1.Recognizer".
        Needs the grpcio-health-checking package (ImportError otherwise).
        """
        health_pb2, health_pb2_grpc = _convert.health_modules()
        stub = health_pb2_grpc.HealthStub(self._open().channel)
        try:
            response = await stub.Check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=self._deadline(timeout_s),
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise from_rpc_error(exc) from exc
        return _convert.health_status_name(health_pb2, response.status)


class _SourceEnd:
    """The end of the source (or its failure, re-raised by the call's writer)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


# Chunks read ahead of the calls: enough that a reconnect does not stall a real-time source.
_FEED_CHUNKS = 64


async def _pump(audio: AsyncGenerator[bytes, None], feed: asyncio.Queue[bytes | _SourceEnd]) -> None:
    try:
        async with contextlib.aclosing(audio):
            async for chunk in audio:
                if chunk:
                    await feed.put(chunk)
    except Exception as exc:
        await feed.put(_SourceEnd(exc))
        return
    await feed.put(_SourceEnd())


class _Rollover:
    """Cancels a resumable stream's call after rollover_s, for the stream to go on in a new one."""

    def __init__(self, call: _StreamCall, resume: StreamResume, after_s: float | None) -> None:
        self.fired = False
        self._call, self._resume = call, resume
        self._handle = None if after_s is None else asyncio.get_running_loop().call_later(after_s, self._fire)

    def _fire(self) -> None:
        if self._resume.resumable and not self._resume.source_done and not self._call.done():
            self.fired = True
            self._call.cancel()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


async def _write_requests(
    call: _StreamCall,
    head: recognizer_pb2.StreamingRecognizeRequest,
    feed: asyncio.Queue[bytes | _SourceEnd],
    resume: StreamResume,
    offset: asyncio.Future[int] | None,
) -> None:
    # A failing source cancels the call (the server sees an abandoned stream) and fails this task,
    # which the reader re-raises; once the server has ended the call, writing simply stops. A
    # resumed call first waits for the server to say where its state ends and sends the audio kept
    # from there.
    try:
        await call.write(head)
        if offset is not None:
            for chunk in resume.replay(await offset):
                await call.write(_convert.audio_message(chunk))
        while not resume.source_done:
            item = await feed.get()
            if isinstance(item, _SourceEnd):
                resume.source_done = True
                if item.error is not None:
                    raise item.error
                break
            # Kept before it is sent: a call that fails meanwhile leaves it to the next one.
            resume.record(item)
            if call.done():
                return
            await call.write(_convert.audio_message(item))
        await call.write(_convert.END_OF_AUDIO)
        await call.done_writing()
    except Exception:
        if call.done():
            return
        call.cancel()
        raise


def _failure(task: asyncio.Task[None]) -> BaseException | None:
    if not task.done() or task.cancelled():
        return None
    return task.exception()


async def _chunks(source: Iterable[bytes] | AsyncIterable[bytes]) -> AsyncGenerator[bytes, None]:
    # Our own generator over the caller's chunks, so that closing it leaves their iterable alone.
    if isinstance(source, AsyncIterable):
        async for item in source:
            yield item
    elif isinstance(source, list | tuple):
        for item in source:
            yield item
    else:
        iterator = iter(source)  # may block (a microphone): read it in a worker thread
        while (chunk := await asyncio.to_thread(_next_or_none, iterator)) is not None:
            yield chunk


def _next_or_none(iterator: Iterator[bytes]) -> bytes | None:
    return next(iterator, None)
