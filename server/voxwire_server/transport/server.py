"""The grpc.aio server: our services, standard health and reflection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from voxwire.v1 import (
    cache_admin_pb2,
    cache_admin_pb2_grpc,
    recognizer_pb2,
    recognizer_pb2_grpc,
    synthesizer_pb2,
    synthesizer_pb2_grpc,
)
from voxwire_server.config import ServerConfig
from voxwire_server.errors import ConfigError
from voxwire_server.sessions.runtime import Runtime
from voxwire_server.transport.cache_admin import CacheAdminServicer
from voxwire_server.transport.recognizer import RecognizerServicer
from voxwire_server.transport.synthesizer import SynthesizerServicer

SERVICE_NAMES = (
    recognizer_pb2.DESCRIPTOR.services_by_name["Recognizer"].full_name,
    synthesizer_pb2.DESCRIPTOR.services_by_name["Synthesizer"].full_name,
    cache_admin_pb2.DESCRIPTOR.services_by_name["CacheAdmin"].full_name,
)


@dataclass
class GrpcServer:
    server: grpc.aio.Server
    health: Any
    port: int

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)


def build_server(config: ServerConfig, runtime: Runtime) -> GrpcServer:
    max_bytes = config.grpc_message_limit_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            # Find frozen or vanished clients in seconds, not minutes.
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.ping_timeout_ms", 2_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.so_reuseport", 0),
        ]
    )
    recognizer_pb2_grpc.add_RecognizerServicer_to_server(RecognizerServicer(runtime), server)
    synthesizer_pb2_grpc.add_SynthesizerServicer_to_server(SynthesizerServicer(runtime), server)
    cache_admin_pb2_grpc.add_CacheAdminServicer_to_server(CacheAdminServicer(runtime), server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # untyped aio module
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        port = server.add_insecure_port(config.listen)
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {config.listen}: {exc}") from None
    if port == 0:
        raise ConfigError(f"cannot listen on {config.listen} (address in use or not available)")
    return GrpcServer(server=server, health=health_servicer, port=port)
