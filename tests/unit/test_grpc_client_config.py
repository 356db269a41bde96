"""Pure parts of internal calls: the channel's service config and options, rich status → ClipMindError,
which methods are internal, the token check, and request context parsing/propagation."""

from __future__ import annotations

import json

import grpc
import grpc.aio
import pytest

from services.common import request_context
from services.common.auth_interceptor import is_internal_method
from services.common.config import CommonSettings
from services.common.errors import (
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from services.common.grpc_client import channel_options, service_config
from services.common.grpc_errors import from_rpc_error, to_rpc_status

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_idempotent_channels_retry_unavailable_with_backoff() -> None:
    config = json.loads(service_config(max_attempts=4))
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    (method,) = config["methodConfig"]
    assert method["name"] == [{}]
    assert method["retryPolicy"] == {
        "maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "2s", "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }


@pytest.mark.parametrize("attempts", [None, 1])
def test_no_retry_policy_without_attempts_to_spare(attempts: int | None) -> None:
    assert json.loads(service_config(max_attempts=attempts)) == {"loadBalancingConfig": [{"round_robin": {}}]}


def test_channel_options() -> None:
    settings = CommonSettings(service_name="search", internal_max_attempts=3)
    options = dict(channel_options(settings, idempotent=True))
    assert json.loads(options["grpc.service_config"])["methodConfig"][0]["retryPolicy"]["maxAttempts"] == 3
    assert "methodConfig" not in json.loads(dict(channel_options(settings, idempotent=False))["grpc.service_config"])
    assert options["grpc.enable_retries"] == 1
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.max_receive_message_length"] == 64 * 1024 * 1024
    assert options["grpc.service_config_disable_resolution"] == 1


def _rpc_error(code: grpc.StatusCode, details: str, trailer: bytes | None = None) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", trailer)) if trailer is not None else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details)


def test_rich_status_round_trips() -> None:
    sent = InvalidArgument("bad page", reason="PAGE_TOKEN_INVALID", metadata={"k": "v"},
                           field_violations=[FieldViolation("page_token", "expired")], retry_delay_s=0.25)
    err = from_rpc_error(_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad page",
                                    to_rpc_status(sent).SerializeToString()))
    assert type(err) is InvalidArgument
    assert (err.message, err.reason, err.metadata, err.field_violations, err.retry_delay_s) == (
        sent.message, sent.reason, sent.metadata, sent.field_violations, sent.retry_delay_s)


def test_plain_status_names_the_call_not_the_address() -> None:
    err = from_rpc_error(_rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect to ipv4:10.0.0.7:50053"),
                         method="GetVideo")
    assert type(err) is Unavailable and err.reason == "UNAVAILABLE"
    assert "GetVideo" in err.message and "10.0.0.7" not in err.message


def test_status_details_of_another_code_are_ignored() -> None:
    trailer = to_rpc_status(NotFound("x", reason="VIDEO_NOT_FOUND")).SerializeToString()
    err = from_rpc_error(_rpc_error(grpc.StatusCode.INTERNAL, "boom", trailer))
    assert type(err) is Internal and err.reason == "INTERNAL"
    assert from_rpc_error(_rpc_error(grpc.StatusCode.NOT_FOUND, "x", b"\xff\x00garbage")).reason == "NOT_FOUND"


@pytest.mark.parametrize(("code", "cls"), [
    (grpc.StatusCode.CANCELLED, Unavailable),
    (grpc.StatusCode.UNKNOWN, Internal),
    (grpc.StatusCode.DATA_LOSS, Internal),
    (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
])
def test_codes_without_their_own_class(code: grpc.StatusCode, cls: type) -> None:
    assert type(from_rpc_error(_rpc_error(code, "x"))) is cls


@pytest.mark.parametrize(("method", "internal"), [
    ("/clipmind.search.internal.v1.SearchInternalService/ReplaceVideoIndex", True),
    ("/clipmind.search.v1.SearchService/Search", False),
    ("/clipmind.search.v1.InternalService/Search", False),  # a service name is not a package segment
    ("/grpc.health.v1.Health/Check", False),
    ("/internal.Foo/Bar", True),
])
def test_internal_methods(method: str, internal: bool) -> None:
    assert is_internal_method(method) is internal


def test_incoming_context_is_checked() -> None:
    ctx = request_context.from_metadata(
        [("x-request-id", "abc-1"), ("traceparent", TRACEPARENT), ("tracestate", "a=b"),
         ("x-clipmind-caller", "search")], trust_caller=True)
    assert ctx == request_context.RequestContext("abc-1", TRACEPARENT, "a=b", "search")
    hostile = request_context.from_metadata(
        [("x-request-id", "x\nforged log line"), ("traceparent", "00-" + "0" * 32 + "-00f067aa0ba902b7-01"),
         ("tracestate", "a=b"), ("x-clipmind-caller", "search")], trust_caller=False)
    assert len(hostile.request_id) == 32 and hostile.request_id != "x\nforged log line"
    assert (hostile.traceparent, hostile.tracestate, hostile.caller) == ("", "", "")


def test_outgoing_metadata_follows_the_bound_context() -> None:
    fresh = dict(request_context.outgoing_metadata())
    assert set(fresh) == {"x-request-id"} and len(fresh["x-request-id"]) == 32
    with request_context.bind(request_id="r1", traceparent=TRACEPARENT, tracestate="a=b"):
        with request_context.bind(caller="ingest"):
            assert request_context.current().request_id == "r1"
            assert request_context.outgoing_metadata() == [
                ("x-request-id", "r1"), ("traceparent", TRACEPARENT), ("tracestate", "a=b")]
    assert request_context.current() == request_context.RequestContext()
