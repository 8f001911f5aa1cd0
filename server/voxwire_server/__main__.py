"""`voxwire-server` / `python -m voxwire_server`."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from voxwire_server.app import App
from voxwire_server.config import ServerConfig, load_config
from voxwire_server.errors import ConfigError
from voxwire_server.logcontext import RequestIdFilter


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # faster-whisper logs every decode at INFO; keep the server's own log readable.
    logging.getLogger("faster_whisper").setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))


async def _serve(config: ServerConfig) -> None:
    app = App(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    print(f"voxwire-server listening on {config.listen.rpartition(':')[0]}:{app.port}", flush=True)
    await stop.wait()
    logging.getLogger(__name__).info("signal received: draining for up to %.0f s", config.shutdown_grace_s)
    await app.stop()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"voxwire-server: {exc}", file=sys.stderr)
        return 2
    _configure_logging(config.log_level)
    try:
        asyncio.run(_serve(config))
    except ConfigError as exc:
        print(f"voxwire-server: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
