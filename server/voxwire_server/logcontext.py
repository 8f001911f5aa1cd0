"""Request and stream ids carried in a contextvar and stamped onto every log record."""

from __future__ import annotations

import contextvars
import logging
import uuid

log = logging.getLogger(__name__)

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("voxwire_request_id", default="-")


def new_request_id() -> str:
    rid = uuid.uuid4().hex[:16]
    request_id.set(rid)
    return rid


def use_request_id(rid: str) -> None:
    """From here on (in this task and the tasks it starts), log lines and errors carry this id: the
    client's own, when its request named one (checked by the transport). One line under the server's
    id links the two, as a client may pick any id."""
    if rid != request_id.get():
        log.info("the client's request id is %s", rid)
        request_id.set(rid)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True
