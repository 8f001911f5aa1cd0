"""voxwire.v1.Synthesizer."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from voxwire.v1 import synthesizer_pb2, synthesizer_pb2_grpc
from voxwire_server import auth
from voxwire_server.config import OUTPUT_SAMPLE_RATES_HZ
from voxwire_server.logcontext import new_request_id, use_request_id
from voxwire_server.sessions.runtime import Runtime
from voxwire_server.transport import convert
from voxwire_server.transport.status import mapped_errors

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]


class SynthesizerServicer(synthesizer_pb2_grpc.SynthesizerServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    async def Synthesize(
        self, request: synthesizer_pb2.SynthesizeRequest, context: Context
    ) -> synthesizer_pb2.SynthesizeResponse:
        rid = new_request_id()
        started = time.perf_counter()
        self._rt.telemetry.synthesize_requests += 1
        async with mapped_errors(context):
            req = convert.synthesis_request(request, rid)
            use_request_id(req.context.request_id)
            with self._rt.admit_call("synthesize", req.context.tenant_id, auth.current().priority):
                audio, voice = await self._rt.synthesis().synthesize(req)
            self._rt.telemetry.synthesize_latency.observe(time.perf_counter() - started)
            log.info(
                "synthesized %d ms with voice %s (cache: %s)",
                audio.duration_ms,
                voice,
                audio.cache_status.value,
            )
            return synthesizer_pb2.SynthesizeResponse(
                audio=audio.data,
                encoding=convert.encoding_pb(audio.encoding),
                sample_rate_hz=audio.sample_rate_hz,
                audio_duration_ms=audio.duration_ms,
                cache_status=convert.cache_status_pb(audio.cache_status),
                voice=voice,
            )

    async def SynthesizeStream(
        self, request: synthesizer_pb2.SynthesizeRequest, context: Context
    ) -> AsyncIterator[synthesizer_pb2.SynthesisChunk]:
        rid = new_request_id()
        started = time.perf_counter()
        self._rt.telemetry.synthesize_requests += 1
        self._rt.telemetry.tts_streams.inc()
        try:
            async with mapped_errors(context):
                req = convert.synthesis_request(request, rid)
                use_request_id(req.context.request_id)
                sequence = 0
                with self._rt.admit_call("synthesize", req.context.tenant_id, auth.current().priority):
                    async for audio in self._rt.synthesis().stream(req):
                        if sequence == 0:
                            self._rt.telemetry.tts_first_audio.observe(time.perf_counter() - started)
                        yield convert.chunk(audio, sequence)
                        sequence += 1
        finally:
            self._rt.telemetry.tts_streams.dec()

    async def ListVoices(
        self, request: synthesizer_pb2.ListVoicesRequest, context: Context
    ) -> synthesizer_pb2.ListVoicesResponse:
        new_request_id()
        async with mapped_errors(context):
            prefix = request.language.lower()
            voices = [v for v in self._rt.synthesizer.voices() if v.language.lower().startswith(prefix)]
            return synthesizer_pb2.ListVoicesResponse(
                voices=[convert.voice(v, OUTPUT_SAMPLE_RATES_HZ) for v in voices]
            )
