"""voxwire.v1.CacheAdmin: statistics, per-user purge and warm-up of the synthesis caches."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from voxwire.v1 import cache_admin_pb2, cache_admin_pb2_grpc
from voxwire_server import __version__, auth
from voxwire_server.domain import AudioFormat, Encoding
from voxwire_server.engines.audio import ASR_SAMPLE_RATE_HZ, decode_clip, float_to_pcm16
from voxwire_server.errors import InvalidInput, LimitExceeded, NotImplementedCapability
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


def _stats_scope(body_tenant: str) -> str | None:
    """The tenant whose rows GetStats shows (None: every tenant's and the server's totals): an
    operator's (or an open server's) choice; any other caller sees its own tenant only."""
    principal = auth.current()
    auth.check_id("tenant_id", body_tenant)
    if not principal.authenticated or auth.OPERATOR in principal.roles:
        return body_tenant or None
    return auth.scoped_ids(body_tenant, "")[0]


class CacheAdminServicer(cache_admin_pb2_grpc.CacheAdminServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    async def GetStats(
        self, request: cache_admin_pb2.GetStatsRequest, context: Context
    ) -> cache_admin_pb2.GetStatsResponse:
        new_request_id()
        async with mapped_errors(context):
            tenant = _stats_scope(request.tenant_id)
            t = self._rt.telemetry
            recognizer, synthesizer = self._rt.engines()
            cache = self._rt.synthesis_cache
            tiers = await cache.stats() if cache is not None and tenant is None else []
            rows = [
                cache_admin_pb2.CacheTierStats(
                    tier=x.tier, entries=x.entries, hits=x.hits, misses=x.misses, bytes=x.bytes
                )
                for x in tiers
            ]
            recognition = self._rt.recognition_cache
            bypass = 0.0
            if recognition is not None:
                entries = dict(await recognition.entries())
                for x in recognition.tenant_stats(tenant):
                    found = entries[x.tier]
                    rows.append(
                        cache_admin_pb2.CacheTierStats(
                            tier=x.tier,
                            entries=found.entries,
                            hits=x.hits,
                            misses=x.requests - x.hits,
                            bytes=found.bytes,
                            tenant_id=x.tenant_id,
                            requests=x.requests,
                            hit_ratio=x.hit_ratio,
                            model_seconds_saved=x.model_seconds_saved,
                            hit_latency_p50_ms=x.hit_latency_p50_ms,
                            miss_latency_p50_ms=x.miss_latency_p50_ms,
                            collisions=x.collisions,
                        )
                    )
                bypass = recognition.bypass_ratio(tenant)
            return cache_admin_pb2.GetStatsResponse(
                tiers=rows,
                asr_model_bypass_ratio=bypass,
                asr_model_version=recognizer.model_version if recognizer else "",
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
            removed = 0
            recognition = self._rt.recognition_cache
            if recognition is not None:
                # First, after its own writes in the background and its refreshes: none lands after.
                removed += await recognition.purge_user(tenant_id, user_id)
            cache = self._rt.synthesis_cache
            # One owner index serves every cache of the store: what the recognition cache's purge left
            # (the synthesis entries, or all of them without a recognition cache) goes here.
            removed += await cache.purge_user(tenant_id, user_id) if cache is not None else 0
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
        rid = new_request_id()
        async with mapped_errors(context):
            cache = self._rt.recognition_cache
            if cache is None:
                raise NotImplementedCapability(
                    "SubmitCorrection: this server runs without a recognition cache (--cache off or "
                    "--asr-cache-tiers '')"
                )
            ctx = convert.context(request.context, rid)
            language = self._rt.recognizer.check_language(request.language or "en")
            if bool(request.audio) == bool(request.cache_key):
                raise InvalidInput("give either audio or cache_key (the cache_key of the result), not both")
            audio = None
            if request.audio:
                enc = convert.encoding(request.encoding)
                if enc is Encoding.LINEAR16 and request.sample_rate_hz <= 0:
                    raise InvalidInput("sample_rate_hz is required for LINEAR16 audio")
                if request.sample_rate_hz < 0:
                    raise InvalidInput("sample_rate_hz must not be negative")
                fmt = AudioFormat(enc, request.sample_rate_hz)
                limit_s = cache.settings.max_audio_s
                samples = await asyncio.to_thread(decode_clip, request.audio, fmt, limit_s)
                if samples.size > limit_s * ASR_SAMPLE_RATE_HZ:
                    raise LimitExceeded(f"the audio of a correction is at most {limit_s:g} s")
                audio = float_to_pcm16(samples)
            await cache.correct(
                ctx, language, request.corrected_transcript, audio=audio, audio_key=request.cache_key
            )
            log.info("stored a correction")
            return cache_admin_pb2.SubmitCorrectionResponse(accepted=True)
