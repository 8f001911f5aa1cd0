"""`voxwire-server` / `python -m voxwire_server`."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TextIO

from voxwire_server.app import App
from voxwire_server.config import ServerConfig, load_config
from voxwire_server.errors import ConfigError
from voxwire_server.logcontext import RequestIdFilter


class JsonFormatter(logging.Formatter):
    """One JSON object per line (a newline inside a message stays escaped, so a message cannot forge
    a line): time (UTC, ISO 8601), level, logger, message, request_id, and exception when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def log_handler(log_format: str, stream: TextIO | None = None) -> logging.Handler:
    """The handler the server logs through: stamps the request id, formats as text or JSON."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    return handler


def _configure_logging(level: str, log_format: str = "text") -> None:
    logging.basicConfig(level=level.upper(), handlers=[log_handler(log_format)])
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
    _configure_logging(config.log_level, config.log_format)
    try:
        asyncio.run(_serve(config))
    except ConfigError as exc:
        print(f"voxwire-server: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
