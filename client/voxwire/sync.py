"""The blocking client: :class:`Client`."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Protocol, Self, cast

import grpc

from voxwire import _convert
from voxwire._convert import AudioInput
from voxwire.audio import paced
from voxwire.errors import from_rpc_error
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
    ) -> Generator[StreamUpdate, None, None]:
        """Streams audio to the recognizer and yields its results and speech events as they come.

        Sends the config, then the audio, then always an end-of-audio marker (which asks the
        server for the last final); the iteration ends when the server closes the stream. The
        call starts when iteration starts. Stopping early (``break``, ``close()``) cancels the
        call; wrap the iterator in ``contextlib.closing`` to have that happen at once.

        Args:
            source: a path or bytes (sent in ``chunk_ms`` pieces; WAV is sent as LINEAR16 PCM), or
                an iterable of encoded chunks (``config.encoding`` required), which gRPC consumes
                on its own thread, so it may block (e.g. a microphone).
            config: recognition options, e.g. ``interim_results=True``.
            chunk_ms: audio per message for a path or bytes source.
            realtime: send a path or bytes source no faster than real time.
            stream_id: the stream's id; the server assigns one when empty.
            resume_token: a token from an earlier :class:`StreamUpdate` to resume that stream. Servers
                without stream resumption (this version) answer a non-empty token with
                :class:`~voxwire.errors.UnimplementedError`.
            timeout_s: deadline for the whole stream; None means none.

        Raises:
            ValueError, OSError: bad arguments or an unreadable file (raised here).
            VoxwireError: the RPC failed (raised while iterating); an exception raised by the
                source iterable is re-raised as it is.
        """
        self._check_open()
        _convert.check_stream_args(source, config, chunk_ms, realtime)
        audio: Iterable[bytes]
        if isinstance(source, str | os.PathLike | bytes | bytearray | memoryview):
            config, chunks, interval = _convert.plan_whole_audio(source, config, chunk_ms, realtime)
            audio = paced(chunks, interval) if interval is not None else chunks
        else:
            audio = source
        head = _convert.stream_head(config or RecognitionConfig(), stream_id, resume_token)
        return self._stream(head, audio, timeout_s)

    def _stream(
        self, head: recognizer_pb2.StreamingRecognizeRequest, audio: Iterable[bytes], timeout_s: float | None
    ) -> Generator[StreamUpdate, None, None]:
        failures: list[Exception] = []
        calls: list[_Cancellable] = []
        requests = _requests(head, audio, failures, lambda: calls and calls[0].cancel())
        call = self._recognizer.StreamingRecognize(requests, timeout=timeout_s, metadata=self._metadata)
        calls.append(cast(_Cancellable, call))
        try:
            for response in call:
                yield _convert.stream_update_from_pb(response)
        except grpc.RpcError as exc:
            if failures:
                raise failures[0] from None
            raise from_rpc_error(exc) from exc
        finally:
            cast(_Cancellable, call).cancel()
        if failures:
            raise failures[0]

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
        """Cache and request counters of the server.

        ``tenant_id`` must be empty: one tenant's view is answered with
        :class:`~voxwire.errors.UnimplementedError` until tenants come from credentials."""
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
        audio: AudioInput,
        corrected_transcript: str,
        *,
        encoding: AudioEncoding | None = None,
        sample_rate_hz: int | None = None,
        tenant_id: str = "",
        user_id: str = "",
        request_id: str = "",
        timeout_s: float | None = None,
    ) -> bool:
        """Tells the server the right transcript of audio it got wrong; returns whether it was accepted.

        Servers without the recognition caches (this version) answer
        :class:`~voxwire.errors.UnimplementedError`.

        ``audio`` is a path, or bytes in ``encoding`` (with ``sample_rate_hz`` for LINEAR16).
        """
        deadline = self._deadline(timeout_s)
        af, _ = _convert.load_audio(
            audio, RecognitionConfig(encoding=encoding, sample_rate_hz=sample_rate_hz)
        )
        request = _convert.correction_request(af, corrected_transcript, tenant_id, user_id, request_id)
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


def _requests(
    head: recognizer_pb2.StreamingRecognizeRequest,
    audio: Iterable[bytes],
    failures: list[Exception],
    cancel: Callable[[], object],
) -> Iterator[recognizer_pb2.StreamingRecognizeRequest]:
    # Runs on a gRPC thread. A failing source is recorded for the caller's thread to re-raise and
    # the call is cancelled; ending without end_of_audio abandons the stream should cancel come
    # too early.
    yield head
    try:
        for chunk in audio:
            if chunk:
                yield _convert.audio_message(chunk)
    except Exception as exc:
        failures.append(exc)
        cancel()
        return
    yield _convert.END_OF_AUDIO
