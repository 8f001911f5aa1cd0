"""voxwire.v1.CacheAdmin. No cache tier exists in this version: the operations that need one say so."""

from __future__ import annotations

from typing import Any

import grpc

from voxwire.v1 import cache_admin_pb2, cache_admin_pb2_grpc
from voxwire_server import __version__
from voxwire_server.errors import NotImplementedCapability
from voxwire_server.logcontext import new_request_id
from voxwire_server.sessions.runtime import Runtime
from voxwire_server.transport.status import mapped_errors

Context = grpc.aio.ServicerContext[Any, Any]


class CacheAdminServicer(cache_admin_pb2_grpc.CacheAdminServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    async def GetStats(
        self, request: cache_admin_pb2.GetStatsRequest, context: Context
    ) -> cache_admin_pb2.GetStatsResponse:
        t = self._rt.telemetry
        recognizer, synthesizer = self._rt.engines()
        return cache_admin_pb2.GetStatsResponse(
            tiers=[],
            uptime_s=t.uptime_s,
            active_streams=t.active_streams,
            recognize_requests=t.recognize_requests,
            streaming_requests=t.streaming_requests,
            synthesize_requests=t.synthesize_requests,
            server_version=__version__,
            asr_model=recognizer.model_name if recognizer else "",
            tts_model=synthesizer.model_name if synthesizer else "",
        )

    async def PurgeUser(
        self, request: cache_admin_pb2.PurgeUserRequest, context: Context
    ) -> cache_admin_pb2.PurgeUserResponse:
        async with mapped_errors(context, new_request_id()):
            raise NotImplementedCapability("PurgeUser (per-user cache purge; no cache tier exists yet)")

    async def Warmup(
        self, request: cache_admin_pb2.WarmupRequest, context: Context
    ) -> cache_admin_pb2.WarmupResponse:
        async with mapped_errors(context, new_request_id()):
            raise NotImplementedCapability("Warmup (the TTS phrase cache)")

    async def SubmitCorrection(
        self, request: cache_admin_pb2.SubmitCorrectionRequest, context: Context
    ) -> cache_admin_pb2.SubmitCorrectionResponse:
        async with mapped_errors(context, new_request_id()):
            raise NotImplementedCapability("SubmitCorrection (the correction cache)")
