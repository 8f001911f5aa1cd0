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
from voxwire_server.auth import ApiKeys
from voxwire_server.config import ServerConfig
from voxwire_server.errors import ConfigError
from voxwire_server.sessions.runtime import Runtime
from voxwire_server.transport.cache_admin import CacheAdminServicer
from voxwire_server.transport.interceptors import CallGuard
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
    guard: CallGuard

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {path!r}: {exc.strerror}") from None


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS from tls_cert/tls_key; with tls_client_ca, clients must show a certificate it signed."""
    if not config.tls_cert:
        return None
    ca = _read(config.tls_client_ca) if config.tls_client_ca else None
    try:
        return grpc.ssl_server_credentials(
            [(_read(config.tls_key), _read(config.tls_cert))],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"the TLS certificate or key is not usable: {exc}") from None


def build_server(config: ServerConfig, runtime: Runtime, keys: ApiKeys | None = None) -> GrpcServer:
    """keys None: authentication off (config.validate allows that on loopback only)."""
    max_bytes = config.grpc_message_limit_bytes
    guard = CallGuard(keys, runtime.telemetry)
    server = grpc.aio.server(
        interceptors=[guard],
        options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            # Find frozen or vanished clients in seconds, not minutes, but outlast a short stall: with
            # a 2 s ping timeout a client frozen (SIGSTOP) for 3 s lost its stream ("ping timeout");
            # with 10 s, 3 s and 6 s freezes kept it. Streams that send nothing end at
            # --stream-idle-timeout-s.
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.ping_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.so_reuseport", 0),
        ],
    )
    recognizer_pb2_grpc.add_RecognizerServicer_to_server(RecognizerServicer(runtime), server)
    synthesizer_pb2_grpc.add_SynthesizerServicer_to_server(SynthesizerServicer(runtime), server)
    cache_admin_pb2_grpc.add_CacheAdminServicer_to_server(CacheAdminServicer(runtime), server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # untyped aio module
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    credentials = server_credentials(config)
    try:
        if credentials is None:
            port = server.add_insecure_port(config.listen)
        else:
            port = server.add_secure_port(config.listen, credentials)
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {config.listen}: {exc}") from None
    if port == 0:
        raise ConfigError(f"cannot listen on {config.listen} (address in use or not available)")
    return GrpcServer(server=server, health=health_servicer, port=port, guard=guard)
