"""voxwire.v1.CacheAdmin: statistics, per-user purge and warm-up of the synthesis caches."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from voxwire.v1 import cache_admin_pb2, cache_admin_pb2_grpc
from voxwire_server import __version__, auth
from voxwire_server.errors import InvalidInput, NotImplementedCapability
from voxwire_server.logcontext import new_request_id
from voxwire_server.sessions.runtime import Runtime
from voxwire_server.transport import convert
from voxwire_server.transport.status import mapped_errors

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]


def _purge_scope(body_tenant: str, body_user: str) -> tuple[str, str]:
    """An operator purges in any tenant (the body's, or its own when empty); an admin only in its own."""
    principal = auth.current()
    if principal.authenticated and auth.OPERATOR in principal.roles:
        auth.check_id("tenant_id", body_tenant)
        auth.check_id("user_id", body_user)
        return body_tenant or principal.tenant_id, body_user
    return auth.scoped_ids(body_tenant, body_user)


class CacheAdminServicer(cache_admin_pb2_grpc.CacheAdminServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    async def GetStats(
        self, request: cache_admin_pb2.GetStatsRequest, context: Context
    ) -> cache_admin_pb2.GetStatsResponse:
        new_request_id()
        async with mapped_errors(context):
            if request.tenant_id:
                raise NotImplementedCapability(
                    "GetStats for one tenant (tenant_id); leave it empty for the server's totals"
                )
            t = self._rt.telemetry
            recognizer, synthesizer = self._rt.engines()
            cache = self._rt.synthesis_cache
            tiers = await cache.stats() if cache is not None else []
            return cache_admin_pb2.GetStatsResponse(
                tiers=[
                    cache_admin_pb2.CacheTierStats(
                        tier=x.tier, entries=x.entries, hits=x.hits, misses=x.misses, bytes=x.bytes
                    )
                    for x in tiers
                ],
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
        new_request_id()
        async with mapped_errors(context):
            if not request.user_id:
                raise InvalidInput("user_id is empty: PurgeUser removes one user's entries")
            tenant_id, user_id = _purge_scope(request.tenant_id, request.user_id)
            cache = self._rt.synthesis_cache
            removed = await cache.purge_user(tenant_id, user_id) if cache is not None else 0
            states = self._rt.stream_states
            if states is not None:
                # Live stream state is the user's too: their streams can no longer be resumed.
                streams = await states.purge_owner(tenant_id, user_id)
                log.info("purged the state of %d streams of one user", streams)
                removed += streams
            log.info("purged %d cache entries of one user", removed)
            return cache_admin_pb2.PurgeUserResponse(entries_removed=removed)

    async def Warmup(
        self, request: cache_admin_pb2.WarmupRequest, context: Context
    ) -> cache_admin_pb2.WarmupResponse:
        rid = new_request_id()
        async with mapped_errors(context):
            base = convert.warmup_request(request, rid)
            with self._rt.admit_call("warmup", auth.current().tenant_id, auth.current().priority):
                phrases, templates = await self._rt.synthesis().warmup(
                    base, list(request.phrases), list(request.templates)
                )
            return cache_admin_pb2.WarmupResponse(phrases_cached=phrases, templates_cached=templates)

    async def SubmitCorrection(
        self, request: cache_admin_pb2.SubmitCorrectionRequest, context: Context
    ) -> cache_admin_pb2.SubmitCorrectionResponse:
        new_request_id()
        async with mapped_errors(context):
            raise NotImplementedCapability("SubmitCorrection (the correction cache)")
