"""Log lines of every process: one JSON object per line, with the request they belong to.

    configure_logging(settings.log_level, settings.service_name, settings.log_format)   # in each main()

Each line carries ``time`` (RFC 3339, UTC, milliseconds), ``level``, ``service`` (the process: ingest, worker,
...), ``logger``, ``message``, ``request_id``, ``trace_id`` and ``span_id`` (from the W3C ``traceparent``; empty
when none), ``caller`` (the calling service, on internal calls) and ``principal`` (``users/{id}`` of the caller)
when known, ``error`` (the formatted exception and stack) when there is one, and any ``extra={...}`` fields of
the call. The ids come from ``services.common.request_context``, bound for every RPC by the auth interceptor
and passed on by every internal call, so the lines of one request can be found in every process it crossed.
For example::

    {"time": "2025-01-02T03:04:05.678Z", "level": "INFO", "service": "search", "logger": "clipmind.access",
     "message": "/clipmind.search.v1.SearchService/SearchClips OK 41.2 ms", "request_id": "4f1c…",
     "trace_id": "", "span_id": "", "principal": "users/…", "method": "/clipmind.search.v1.SearchService/SearchClips",
     "code": "OK", "duration_ms": 41.2}

``CLIPMIND_LOG_FORMAT=text`` keeps the plain ``time level logger: message`` lines, for a person at a terminal.

Standard library only (``logging`` + ``json``): the formatter is ~60 lines, and python-json-logger would add a
dependency for little more than the list of a LogRecord's own attributes, while the request-context fields and
the RFC 3339 time would still be ours.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from services.common import request_context

LOG_FORMATS = ("json", "text")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# What every LogRecord has of its own: everything else in its __dict__ came from ``extra={...}``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime",
                                                                                     "taskName"}


def trace_ids(traceparent: str) -> tuple[str, str]:
    """(trace id, parent span id) of a W3C ``traceparent``; empty strings for none or a malformed one."""
    if not request_context.valid_traceparent(traceparent):
        return "", ""
    parts = traceparent.split("-")
    return parts[1], parts[2]


def rfc3339(created: float) -> str:
    """``created`` (a ``time.time()``) as ``2025-01-02T03:04:05.678Z``."""
    moment = datetime.fromtimestamp(created, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module doc); ``service`` names the process."""

    def __init__(self, service: str = "") -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        ctx = request_context.current()
        trace_id, span_id = trace_ids(ctx.traceparent)
        line: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": ctx.request_id,
            "trace_id": trace_id,
            "span_id": span_id,
        }
        if ctx.caller:
            line["caller"] = ctx.caller
        if ctx.principal is not None:
            line["principal"] = ctx.principal.name
        error = []
        if record.exc_info:
            error.append(self.formatException(record.exc_info))
        elif record.exc_text:
            error.append(record.exc_text)
        if record.stack_info:
            error.append(self.formatStack(record.stack_info))
        if error:
            line["error"] = "\n".join(error)
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                line[key if key not in line else f"extra.{key}"] = value
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(level: str, service: str = "", log_format: str = "json") -> None:
    """Send the process's log records to stderr, as JSON lines (``log_format="json"``) or plain text."""
    handler = logging.StreamHandler()
    if log_format == "text":
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    else:
        handler.setFormatter(JsonFormatter(service))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True)
