"""voxwire.v1.Recognizer."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc

from voxwire.v1 import recognizer_pb2, recognizer_pb2_grpc
from voxwire_server import auth
from voxwire_server.domain import AudioChunk, EndOfAudio, StreamInput, StreamStart, StreamUpdate
from voxwire_server.errors import InvalidInput, NotImplementedCapability, PermissionDenied, VoxwireError
from voxwire_server.logcontext import new_request_id, use_request_id
from voxwire_server.sessions.recognition import RecognitionStream, recognize_clip
from voxwire_server.sessions.resumption import Resumption
from voxwire_server.sessions.runtime import Runtime
from voxwire_server.transport import convert
from voxwire_server.transport.status import mapped_errors, status_for
from voxwire_server.transport.writer import StreamWriter

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]


class RecognizerServicer(recognizer_pb2_grpc.RecognizerServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    async def Recognize(
        self, request: recognizer_pb2.RecognizeRequest, context: Context
    ) -> recognizer_pb2.RecognizeResponse:
        rid = new_request_id()
        started = time.perf_counter()
        self._rt.telemetry.recognize_requests += 1
        async with mapped_errors(context):
            if not request.HasField("config"):
                raise InvalidInput("config is required")
            options = convert.recognition_options(
                request.config, self._rt.endpointing, self._rt.default_tier, rid
            )
            use_request_id(options.context.request_id)
            with self._rt.admit_call("recognize", options.context.tenant_id, auth.current().priority):
                results, duration_ms = await recognize_clip(
                    self._rt.recognizer,
                    self._rt.vad_factory,
                    request.audio,
                    options,
                    self._rt.recognition_limits,
                    self._rt.streams,
                    self._rt.recognition_cache,
                )
            log.info("recognized %d ms of audio into %d segments", duration_ms, len(results))
            self._rt.telemetry.recognize_latency.observe(time.perf_counter() - started)
            return recognizer_pb2.RecognizeResponse(
                results=[convert.result(r) for r in results],
                audio_duration_ms=duration_ms,
                processing_latency_ms=(time.perf_counter() - started) * 1000,
            )

    # grpc.aio accepts a coroutine handler that answers through context.write: the session's tasks
    # emit from inside a TaskGroup, which an async generator cannot span.
    async def StreamingRecognize(  # type: ignore[override]
        self, request_iterator: AsyncIterator[recognizer_pb2.StreamingRecognizeRequest], context: Context
    ) -> None:
        rid = new_request_id()
        async with mapped_errors(context):
            first = await anext(aiter(request_iterator), None)
            if first is None:
                raise InvalidInput("the stream carried no messages; the first one must be config")
            if first.WhichOneof("request") != "config":
                got = first.WhichOneof("request") or "an empty message"
                raise InvalidInput(f"the first message must be config, got {got}")
            cfg = first.config
            resumed = await self._resumption(cfg, rid) if cfg.resume_token else None
            if resumed is None and not cfg.HasField("config"):
                raise InvalidInput("config.config (RecognitionConfig) is required")
            if resumed is not None:
                state = resumed.state
                start = StreamStart(
                    options=state.options, stream_id=state.stream_id, resume_token=resumed.token
                )
            else:
                start = StreamStart(
                    options=convert.recognition_options(
                        cfg.config, self._rt.endpointing, self._rt.default_tier, rid
                    ),
                    stream_id=convert.stream_id(cfg.stream_id) or uuid.uuid4().hex,
                )
            use_request_id(start.options.context.request_id)
            recognizer = self._rt.recognizer
            shedding = self._rt.admit_stream(start.options.context.tenant_id, auth.current().priority)
            try:
                log.info("stream %s opened", start.stream_id)

                latencies = self._rt.telemetry.stream_latencies()

                async def emit(update: StreamUpdate) -> None:
                    latencies(update)
                    await writer.send(convert.stream_update(update, start.stream_id))

                stream = RecognitionStream(
                    start,
                    recognizer,
                    self._rt.vad_factory,
                    self._rt.recognition_limits,
                    emit,
                    shedding=shedding,
                    stop=self._rt.stopping,
                    states=self._rt.stream_states,
                    resumed=resumed,
                    cache=self._rt.recognition_cache,
                )
                # Leaving the writer's block waits for queued responses to be written, so the
                # status that follows (OK or an error) never races a write.
                async with StreamWriter(context) as writer:
                    await stream.run(_inputs(request_iterator))
                await stream.close()
                log.info("stream %s finished", start.stream_id)
            finally:
                self._rt.stream_closed(shedding)

    async def _resumption(self, cfg: recognizer_pb2.StreamingRecognitionConfig, rid: str) -> Resumption:
        """The stored state a resume_token names, for the tenant (and user) the call acts for."""
        states = self._rt.stream_states
        if states is None:
            raise NotImplementedCapability(
                "stream resumption: this server keeps no stream state (--state off)"
            )
        if cfg.HasField("config"):
            options = convert.recognition_options(
                cfg.config, self._rt.endpointing, self._rt.default_tier, rid
            )
            tenant_id, user_id = options.context.tenant_id, options.context.user_id
        else:
            tenant_id, user_id = auth.scoped_ids("", "")
        try:
            resumed = await states.resume(cfg.resume_token, tenant_id, self._rt.recognizer.model_name)
            if user_id and resumed.state.user_id != user_id:
                raise PermissionDenied("the resume token belongs to another user")
        except VoxwireError as exc:
            self._rt.telemetry.stream_resumes.labels(status_for(exc, rid)[0].name.lower()).inc()
            raise
        self._rt.telemetry.stream_resumes.labels("resumed").inc()
        log.info("stream %s resumed from state %d", resumed.state.stream_id, resumed.state.sequence)
        return resumed


async def _inputs(
    requests: AsyncIterator[recognizer_pb2.StreamingRecognizeRequest],
) -> AsyncIterator[StreamInput]:
    async for message in requests:
        kind = message.WhichOneof("request")
        if kind == "audio":
            yield AudioChunk(message.audio)
        elif kind == "end_of_audio":
            yield EndOfAudio()
            return
        elif kind == "config":
            raise InvalidInput("config may only be sent once, as the first message")
        else:
            raise InvalidInput("empty message: set audio or end_of_audio")
