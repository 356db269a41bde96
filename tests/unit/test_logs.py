"""Log lines are JSON objects with the time, level, service and the bound request's ids (services/common/logs.py)."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import Iterator

import pytest

from services.common import request_context
from services.common.logs import JsonFormatter, configure_logging, trace_ids
from services.common.principal import Principal

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


@pytest.fixture
def lines() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing JSON lines of the ``search`` service into a buffer."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter("search"))
    logger = logging.getLogger(f"test.logs.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, out
    logger.removeHandler(handler)


def _records(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_line_in_a_request_carries_its_ids_and_the_service(lines) -> None:  # type: ignore[no-untyped-def]
    logger, out = lines
    who = Principal(uuid.uuid4(), "user")
    with request_context.bind(request_id="req-123", traceparent=TRACEPARENT, principal=who):
        logger.info("searched %d clips", 3)
    [line] = _records(out)
    assert line["message"] == "searched 3 clips"
    assert line["level"] == "INFO" and line["service"] == "search" and line["logger"] == logger.name
    assert line["request_id"] == "req-123"
    assert (line["trace_id"], line["span_id"]) == (TRACE_ID, SPAN_ID)
    assert line["principal"] == f"users/{who.user_id}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]), line["time"]
    assert "error" not in line


def test_outside_any_request_the_ids_are_empty(lines) -> None:  # type: ignore[no-untyped-def]
    logger, out = lines
    logger.warning("starting")
    [line] = _records(out)
    assert (line["request_id"], line["trace_id"], line["span_id"]) == ("", "", "")
    assert "principal" not in line and "caller" not in line and line["level"] == "WARNING"


def test_an_exception_is_in_error(lines) -> None:  # type: ignore[no-untyped-def]
    logger, out = lines
    with request_context.bind(request_id="req-err"):
        try:
            raise NotADirectoryError("staging is a file")
        except OSError:
            logger.exception("upload failed")
    [line] = _records(out)
    assert line["level"] == "ERROR" and line["message"] == "upload failed" and line["request_id"] == "req-err"
    assert "Traceback" in line["error"] and "NotADirectoryError: staging is a file" in line["error"]


def test_extra_fields_are_kept_and_never_replace_the_own_ones(lines) -> None:  # type: ignore[no-untyped-def]
    logger, out = lines
    logger.info("done", extra={"method": "/a.B/C", "duration_ms": 1.5, "video": uuid.UUID(int=1),
                               "service": "spoofed"})
    [line] = _records(out)
    assert line["method"] == "/a.B/C" and line["duration_ms"] == 1.5
    assert line["video"] == str(uuid.UUID(int=1))  # not JSON by itself: written as its str()
    assert line["service"] == "search" and line["extra.service"] == "spoofed"


def test_a_malformed_traceparent_gives_no_trace_id() -> None:
    assert trace_ids("") == ("", "")
    assert trace_ids("00-zz-00f067aa0ba902b7-01") == ("", "")
    assert trace_ids(TRACEPARENT) == (TRACE_ID, SPAN_ID)


def test_configure_logging_writes_json_by_default_and_text_on_request(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", "worker")
        with request_context.bind(request_id="job-1"):
            logging.getLogger("clipmind.worker").info("took job")
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert (line["service"], line["request_id"], line["message"]) == ("worker", "job-1", "took job")
        configure_logging("INFO", "worker", "text")
        logging.getLogger("clipmind.worker").info("took job")
        text = capsys.readouterr().err.strip().splitlines()[-1]
        assert text.endswith("INFO clipmind.worker: took job") and not text.startswith("{")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
