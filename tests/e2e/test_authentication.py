"""Every public RPC of every service wants a credential: walked from the descriptor set, so a new RPC is covered
the day it is added. Without one (or with a bad one) a call is UNAUTHENTICATED over native gRPC, straight to the
service and through Envoy, and HTTP 401 over REST; only identity's sign-in methods may be called anonymously.
Health stays open."""

from __future__ import annotations

import re
from collections.abc import Iterator

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.identity.servicer import ANONYMOUS_METHODS
from tests.unit.test_contracts import clipmind_files, http_path, http_rule, load_descriptor_set

pytestmark = pytest.mark.e2e

_VARIABLE = re.compile(r"\{([^}=]+)(?:=([^}]*))?\}")
BAD_CREDENTIALS = ["Bearer not-a-token", "Bearer cmk_no-such-key", "Basic YWRtaW46YWRtaW4="]


def _methods() -> Iterator[tuple[str, str, descriptor_pb2.MethodDescriptorProto]]:
    """(service short name, full method path, method) of every public RPC."""
    for file in clipmind_files(load_descriptor_set()):
        for service in file.service:
            for method in service.method:
                yield file.package.split(".")[1], f"/{file.package}.{service.name}/{method.name}", method


PROTECTED = [(svc, path, m) for svc, path, m in _methods() if path not in ANONYMOUS_METHODS]


def test_only_sign_in_methods_are_anonymous() -> None:
    every = {path for _, path, _ in _methods()}
    assert set(ANONYMOUS_METHODS) <= every
    assert sorted(p.rsplit("/", 1)[1] for p in ANONYMOUS_METHODS) == ["CreateUser", "Login", "Logout",
                                                                      "RefreshToken"]


def _call(channel: grpc.Channel, path: str, method: descriptor_pb2.MethodDescriptorProto,
          metadata: list[tuple[str, str]]) -> grpc.StatusCode:
    """The status of calling ``path`` with an empty request (raw bytes: the refusal comes before parsing)."""
    identity = {"request_serializer": None, "response_deserializer": None}
    try:
        if method.client_streaming:
            if method.server_streaming:
                list(channel.stream_stream(path, **identity)(iter([b""]), metadata=metadata, timeout=20))
            else:
                channel.stream_unary(path, **identity)(iter([b""]), metadata=metadata, timeout=20)
        elif method.server_streaming:
            list(channel.unary_stream(path, **identity)(b"", metadata=metadata, timeout=20))
        else:
            channel.unary_unary(path, **identity)(b"", metadata=metadata, timeout=20)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.mark.parametrize(("service", "path", "method"), PROTECTED, ids=[p for _, p, _ in PROTECTED])
def test_every_rpc_without_credentials_is_unauthenticated(  # type: ignore[no-untyped-def]
    endpoints, service: str, path: str, method: descriptor_pb2.MethodDescriptorProto
) -> None:
    targets = {"envoy": endpoints.envoy_url.removeprefix("http://"), "direct": endpoints.grpc[service]}
    for where, target in targets.items():
        with grpc.insecure_channel(target) as channel:
            for metadata in ([], *([("authorization", bad)] for bad in BAD_CREDENTIALS)):
                code = _call(channel, path, method, metadata)
                assert code == grpc.StatusCode.UNAUTHENTICATED, (where, metadata, code)


def _rest_request(method: descriptor_pb2.MethodDescriptorProto) -> tuple[str, str]:
    rule = http_rule(method)
    assert rule is not None
    verb = rule.WhichOneof("pattern")
    verb = rule.custom.kind if verb == "custom" else verb
    path = _VARIABLE.sub(lambda m: (m.group(2) or "x").replace("**", "x").replace("*", "x"), http_path(rule))
    return verb.upper(), path


@pytest.mark.parametrize(("service", "path", "method"), PROTECTED, ids=[p for _, p, _ in PROTECTED])
def test_every_rest_route_without_credentials_is_401(  # type: ignore[no-untyped-def]
    anonymous: httpx.Client, service: str, path: str, method: descriptor_pb2.MethodDescriptorProto
) -> None:
    verb, url = _rest_request(method)
    body = None if verb in ("GET", "DELETE") else b"[{}]" if method.client_streaming else b"{}"
    for headers in ({}, *({"authorization": bad} for bad in BAD_CREDENTIALS)):
        response = anonymous.request(verb, url, content=body, headers={**headers, "content-type": "application/json"})
        assert response.status_code == 401, (verb, url, headers, response.status_code, response.text[:200])
        assert "not-a-token" not in response.text


def test_health_needs_no_credentials(endpoints) -> None:  # type: ignore[no-untyped-def]
    for service, address in endpoints.grpc.items():
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


def test_a_users_key_and_token_work_over_rest_and_grpc(rest: httpx.Client, channel: grpc.Channel) -> None:
    from clipmind.identity.v1 import identity_service_pb2 as pb
    from clipmind.identity.v1 import identity_service_pb2_grpc as pb_grpc

    me = rest.get("/v1/users:me")
    assert me.status_code == 200 and me.json()["role"] == "ROLE_USER", me.text
    assert pb_grpc.IdentityServiceStub(channel).GetCurrentUser(pb.GetCurrentUserRequest(), timeout=20).email == \
        me.json()["email"]
    assert rest.get("/v1/videos").status_code == 200
