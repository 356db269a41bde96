"""Internal service-to-service calls against real in-process gRPC servers (no mocks): the service identity
check on ``*.internal.*`` methods, request context across two hops, gRPC's retries for idempotent stubs only,
the default deadline, the per-target circuit breaker, rich errors turned back into ClipMindError, and
client-side round robin over every address a DNS name resolves to (``localhost`` → 127.0.0.1 and ::1, and a
name served by a tiny DNS server started here)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio
import pytest
from pydantic import SecretStr

from services.common import request_context
from services.common.auth import Authenticator, SystemCredentials
from services.common.auth_interceptor import AuthInterceptor
from services.common.config import CommonSettings
from services.common.errors import (
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
    invalid_field,
)
from services.common.grpc_client import InternalChannels
from services.common.grpc_errors import ErrorInterceptor
from services.common.principal import SYSTEM, Principal
from services.common.revocations import Revocations
from services.common.tokens import TokenSigner, format_key

pytestmark = pytest.mark.integration

KEY = b"k" * 32
KEYS = format_key("k1", KEY)
OTHER_KEYS = format_key("k1", b"o" * 32)
SIGNER = TokenSigner({"k1": KEY}, active_kid="k1")
INTERNAL = "clipmind.test.internal.v1.EchoService"
PUBLIC = "clipmind.test.v1.PublicEchoService"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class EchoStub:
    """What protoc would generate for the test services (bytes in, bytes out)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.Echo = channel.unary_unary(f"/{INTERNAL}/Echo")
        self.Relay = channel.unary_unary(f"/{INTERNAL}/Relay")
        self.Count = channel.unary_stream(f"/{INTERNAL}/Count")
        self.Sum = channel.stream_unary(f"/{INTERNAL}/Sum")


class PublicStub:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.Echo = channel.unary_unary(f"/{PUBLIC}/Echo")


def settings(**overrides: Any) -> CommonSettings:
    values: dict[str, Any] = {
        "service_name": "tester",
        "jwt_keys": SecretStr(KEYS),
        "internal_deadline_s": 5.0,
        "internal_max_attempts": 4,
        "internal_breaker_failures": 3,
        "internal_breaker_reset_s": 0.3,
    }
    values.update(overrides)
    return CommonSettings(**values)


Behavior = Callable[[Any, grpc.aio.ServicerContext], Any]


@asynccontextmanager
async def serving(
    internal: dict[str, Behavior] | None = None,
    public: dict[str, Behavior] | None = None,
    *,
    address: str = "127.0.0.1:0",
    streams: frozenset[str] = frozenset(),
) -> AsyncIterator[int]:
    """A real server with the production interceptors; yields its port. Methods named in ``streams`` are
    unary-stream; ``Sum`` is stream-unary; the rest unary-unary."""

    def handlers(behaviors: dict[str, Behavior]) -> dict[str, grpc.RpcMethodHandler]:
        out = {}
        for name, behavior in behaviors.items():
            if name in streams:
                out[name] = grpc.unary_stream_rpc_method_handler(behavior)
            elif name == "Sum":
                out[name] = grpc.stream_unary_rpc_method_handler(behavior)
            else:
                out[name] = grpc.unary_unary_rpc_method_handler(behavior)
        return out

    # The unreachable Redis fails revocation checks open: these tests are about the system identity.
    revocations = Revocations.from_url("redis://127.0.0.1:9/0")
    server = grpc.aio.server(interceptors=[AuthInterceptor(Authenticator(SIGNER, revocations, None)),
                                           ErrorInterceptor()])
    server.add_generic_rpc_handlers([
        grpc.method_handlers_generic_handler(INTERNAL, handlers(internal or {})),
        grpc.method_handlers_generic_handler(PUBLIC, handlers(public or {})),
    ])
    port = server.add_insecure_port(address)
    assert port, f"cannot bind {address}"
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)
        await revocations.close()


async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


@asynccontextmanager
async def channels(**overrides: Any) -> AsyncIterator[InternalChannels]:
    chans = InternalChannels(settings(**overrides))
    try:
        yield chans
    finally:
        await chans.close()


def target(port: int) -> str:
    return f"dns:///127.0.0.1:{port}"


# -- service identity ----------------------------------------------------------------------------------------


async def stream_echo(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield request


async def test_internal_method_needs_the_system_identity() -> None:
    internal = {"Echo": echo, "Count": stream_echo}
    async with serving(internal, {"Echo": echo}, streams=frozenset({"Count"})) as port:
        async with channels(jwt_keys=SecretStr("")) as anonymous:
            with pytest.raises(Unauthenticated) as missing:
                await anonymous.stub(EchoStub, target(port)).Echo(b"x")
            assert missing.value.reason == "SERVICE_IDENTITY_REQUIRED"
            assert missing.value.metadata == {"method": f"/{INTERNAL}/Echo"}
            with pytest.raises(Unauthenticated) as public:  # a public method wants a user's credential
                await anonymous.stub(PublicStub, target(port)).Echo(b"pub")
            assert public.value.reason == "CREDENTIALS_REQUIRED"
        async with channels(jwt_keys=SecretStr(OTHER_KEYS)) as impostor:  # signed with another key
            with pytest.raises(Unauthenticated) as invalid:
                await impostor.stub(EchoStub, target(port)).Echo(b"x")
            assert invalid.value.reason == "SERVICE_IDENTITY_INVALID"
            with pytest.raises(Unauthenticated) as streamed:  # streaming methods are guarded the same way
                [item async for item in impostor.stub(EchoStub, target(port)).Count(b"x")]
            assert streamed.value.reason == "SERVICE_IDENTITY_INVALID"
        async with channels() as trusted:
            assert await trusted.stub(EchoStub, target(port)).Echo(b"ok") == b"ok"
            assert await trusted.stub(PublicStub, target(port)).Echo(b"pub") == b"pub"  # the system may
            assert [x async for x in trusted.stub(EchoStub, target(port)).Count(b"s")] == [b"s"]
            # refusals are answers: they never count against the target's breaker
            assert trusted.breaker(target(port)).state == "closed"


async def test_wrong_scheme_user_tokens_and_raw_metadata() -> None:
    """Seen from a plain gRPC client: the rich status is in grpc-status-details-bin, as for every error."""
    from google.rpc import error_details_pb2, status_pb2

    system = SystemCredentials(SIGNER).authorization().removeprefix("Bearer ")
    user_token, _ = SIGNER.issue(uuid.uuid4(), "user")
    async with serving({"Echo": echo}) as port:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(f"/{INTERNAL}/Echo")
            for authorization in (f"Basic {system}", f"Bearer {user_token}"):  # a user is not a service
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call(b"x", metadata=[("authorization", authorization)])
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                trailer = dict(err.value.trailing_metadata())["grpc-status-details-bin"]
                info = error_details_pb2.ErrorInfo()
                status_pb2.Status.FromString(trailer).details[0].Unpack(info)
                assert (info.reason, info.domain) == ("SERVICE_IDENTITY_INVALID", "clipmind.dev")
            assert await call(b"y", metadata=[("authorization", f"bearer {system}")]) == b"y"


# -- request context -----------------------------------------------------------------------------------------


async def test_request_context_travels_two_hops() -> None:
    seen: list[request_context.RequestContext] = []

    async def record(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen.append(request_context.current())
        return request

    async with serving({"Echo": record}) as downstream_port, channels(service_name="middle") as middle:
        downstream = middle.stub(EchoStub, target(downstream_port))

        async def relay(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            seen.append(request_context.current())
            return await downstream.Echo(request)

        async with serving({"Relay": relay}, {"Relay": relay}) as port, channels() as chans:
            with request_context.bind(request_id="req-42", traceparent=TRACEPARENT, tracestate="k=v"):
                assert await chans.stub(EchoStub, target(port)).Relay(b"hop") == b"hop"
            first, second = seen
            assert (first.request_id, first.traceparent, first.tracestate, first.caller) == (
                "req-42", TRACEPARENT, "k=v", "tester")
            assert (second.request_id, second.traceparent, second.tracestate, second.caller) == (
                "req-42", TRACEPARENT, "k=v", "middle")
            assert first.principal == second.principal == SYSTEM  # both hops act as the system

            # A user's call: the caller header is not trusted from a user, and onward calls act as the system.

            # Nothing bound: the server makes up a request id, and a public handler's outgoing calls carry it.
            seen.clear()
            user = uuid.uuid4()
            token, _ = SIGNER.issue(user, "user")
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as raw:
                public_relay = raw.unary_unary(f"/{PUBLIC}/Relay")
                await public_relay(b"x", metadata=[("x-clipmind-caller", "spoofed"), ("traceparent", "garbage"),
                                                   ("authorization", f"Bearer {token}")])
            public, internal = seen
            assert len(public.request_id) == 32 and public.caller == "" and public.traceparent == ""
            assert public.principal == Principal(user, "user") and public.claims is not None
            assert internal.request_id == public.request_id and internal.caller == "middle"
    assert request_context.current() == request_context.RequestContext()


# -- retries, deadlines --------------------------------------------------------------------------------------


async def test_unavailable_is_retried_only_for_idempotent_stubs() -> None:
    calls = Counter[str]()

    async def flaky(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        calls[request.decode()] += 1
        if calls[request.decode()] <= 2:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return request

    async with serving({"Echo": flaky}) as port, channels(internal_breaker_failures=10) as chans:
        assert await chans.stub(EchoStub, target(port)).Echo(b"idempotent") == b"idempotent"
        assert calls["idempotent"] == 3
        with pytest.raises(Unavailable) as err:
            await chans.stub(EchoStub, target(port), idempotent=False).Echo(b"once")
        assert calls["once"] == 1
        assert err.value.reason == "UNAVAILABLE"


async def test_default_deadline_applies_to_calls_without_one() -> None:
    async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(float(request))
        return request

    async with serving({"Echo": slow}) as port, channels(internal_deadline_s=0.2) as chans:
        stub = chans.stub(EchoStub, target(port))
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as err:
            await stub.Echo(b"5")
        assert time.monotonic() - started < 1.5
        assert err.value.reason == "DEADLINE_EXCEEDED"
        assert "5" not in err.value.message and "127.0.0.1" not in err.value.message
        assert await stub.Echo(b"0.4", timeout=3) == b"0.4"  # a deadline of the caller's own wins


# -- circuit breaker -----------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def wait_ready(channel: grpc.aio.Channel, timeout_s: float) -> None:
    async def ready() -> None:
        while (state := channel.get_state(try_to_connect=True)) != grpc.ChannelConnectivity.READY:
            await channel.wait_for_state_change(state)

    await asyncio.wait_for(ready(), timeout_s)


async def test_breaker_opens_on_a_dead_target_and_a_probe_closes_it() -> None:
    port = free_port()
    async with channels(internal_breaker_failures=3, internal_breaker_reset_s=0.5) as chans:
        stub = chans.stub(EchoStub, target(port), idempotent=False)
        for _ in range(3):
            with pytest.raises(Unavailable) as err:
                await stub.Echo(b"x")
            assert err.value.reason == "UNAVAILABLE"
            assert "127.0.0.1" not in err.value.message  # gRPC's text names addresses; it stays in __cause__
        started = time.monotonic()
        with pytest.raises(Unavailable) as fast:
            await stub.Echo(b"x")
        assert time.monotonic() - started < 0.05
        assert fast.value.reason == "CIRCUIT_OPEN" and target(port) in fast.value.message
        assert fast.value.retry_delay_s is not None and 0 < fast.value.retry_delay_s <= 0.5
        served = Counter[str]()

        async def count(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            served["calls"] += 1
            return request

        async with serving({"Echo": count}, address=f"127.0.0.1:{port}"):
            with pytest.raises(Unavailable) as still:  # still cooling down: the server is not asked
                await stub.Echo(b"x")
            assert still.value.reason == "CIRCUIT_OPEN" and served["calls"] == 0
            # gRPC reconnects on its own backoff schedule (≤ 5 s, here well under a second); a probe sent
            # before that would fail fast and re-open the breaker, which is right but not what this checks.
            await wait_ready(chans.channel(target(port), idempotent=False), timeout_s=5)
            await asyncio.sleep(max(0.0, chans.breaker(target(port)).retry_after_s()) + 0.05)
            assert await stub.Echo(b"probe") == b"probe"
            assert chans.breaker(target(port)).state == "closed"
            assert await stub.Echo(b"again") == b"again" and served["calls"] == 2


async def test_breaker_counts_unavailable_answers_and_lets_one_probe_through() -> None:
    state = {"healthy": False, "calls": 0}

    async def sick(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        state["calls"] += 1
        if not state["healthy"]:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "overloaded")
        return request

    async def missing(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise NotFound("no such video", reason="VIDEO_NOT_FOUND")

    async with serving({"Echo": sick, "Relay": missing}) as port, channels(internal_breaker_failures=3) as chans:
        stub = chans.stub(EchoStub, target(port), idempotent=False)
        with pytest.raises(NotFound):  # an answer: resets the count
            await stub.Relay(b"x")
        for _ in range(3):
            with pytest.raises(Unavailable):
                await stub.Echo(b"x")
        assert state["calls"] == 3
        for _ in range(5):
            with pytest.raises(Unavailable) as err:
                await chans.stub(EchoStub, target(port)).Echo(b"x")  # idempotent stubs share the breaker
            assert err.value.reason == "CIRCUIT_OPEN"
        assert state["calls"] == 3
        state["healthy"] = True
        await asyncio.sleep(0.35)
        # Two calls at once in half-open: one probe goes to the server, the other fails fast.
        results = await asyncio.gather(stub.Echo(b"a"), stub.Echo(b"b"), return_exceptions=True)
        assert sorted(map(type, results), key=lambda t: t.__name__) == [Unavailable, bytes]
        assert state["calls"] == 4
        assert chans.breaker(target(port)).state == "closed"
        assert await stub.Echo(b"c") == b"c"


# -- errors --------------------------------------------------------------------------------------------------


async def test_rich_errors_become_the_same_clipmind_errors() -> None:
    async def fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        kind = request.decode()
        if kind == "not-found":
            raise NotFound("video v1 not found", reason="VIDEO_NOT_FOUND", metadata={"video": "videos/v1"})
        if kind == "invalid":
            raise invalid_field("page_size", "must be positive")
        if kind == "busy":
            raise Unavailable("database busy", reason="DATABASE_UNAVAILABLE", retry_delay_s=1.5)
        raise RuntimeError("secret detail /etc/passwd")

    async def count(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for i in range(int(request)):
            yield str(i).encode()
        if int(request) == 2:
            raise NotFound("gone mid-stream", reason="VIDEO_DELETED")

    async def total(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        return str(sum([int(r) async for r in requests])).encode()

    async with (
        serving({"Echo": fail, "Count": count, "Sum": total}, streams=frozenset({"Count"})) as port,
        channels() as chans,
    ):
        stub = chans.stub(EchoStub, target(port), idempotent=False)
        with pytest.raises(NotFound) as nf:
            await stub.Echo(b"not-found")
        assert (nf.value.reason, nf.value.message, nf.value.metadata) == (
            "VIDEO_NOT_FOUND", "video v1 not found", {"video": "videos/v1"})
        with pytest.raises(InvalidArgument) as bad:
            await stub.Echo(b"invalid")
        assert [(v.field, v.description) for v in bad.value.field_violations] == [("page_size", "must be positive")]
        with pytest.raises(Unavailable) as busy:
            await stub.Echo(b"busy")
        assert (busy.value.reason, busy.value.retry_delay_s) == ("DATABASE_UNAVAILABLE", 1.5)
        with pytest.raises(Internal) as internal:
            await stub.Echo(b"boom")
        assert "secret" not in internal.value.message and internal.value.reason == "INTERNAL_ERROR"

        assert [x async for x in stub.Count(b"3")] == [b"0", b"1", b"2"]
        received: list[bytes] = []
        with pytest.raises(NotFound) as mid:
            async for item in stub.Count(b"2"):
                received.append(item)
        assert received == [b"0", b"1"] and mid.value.reason == "VIDEO_DELETED"

        async def numbers() -> AsyncIterator[bytes]:
            for n in (b"1", b"2", b"3"):
                yield n

        assert await stub.Sum(numbers()) == b"6"
        assert chans.breaker(target(port)).state == "closed"


# -- round robin over DNS ------------------------------------------------------------------------------------


class _TinyDns(asyncio.DatagramProtocol):
    """Answers A/AAAA questions for a few names (enough for gRPC's c-ares resolver); NXDOMAIN otherwise."""

    def __init__(self, records: dict[str, list[str]]) -> None:
        self.records = records
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        i, labels = 12, []
        while data[i]:
            labels.append(data[i + 1:i + 1 + data[i]].decode())
            i += 1 + data[i]
        qtype = struct.unpack("!H", data[i + 1:i + 3])[0]
        name = ".".join(labels).lower()
        family, rtype = (socket.AF_INET6, 28) if qtype == 28 else (socket.AF_INET, 1)
        answers = [socket.inet_pton(family, a) for a in self.records.get(name, []) if (":" in a) == (rtype == 28)]
        answers = answers if qtype in (1, 28) else []
        rcode = 0 if name in self.records else 3
        reply = struct.pack("!HHHHHH", struct.unpack("!H", data[:2])[0], 0x8180 | rcode, 1, len(answers), 0, 0)
        reply += data[12:i + 5]
        for rdata in answers:
            reply += struct.pack("!HHHIH", 0xC00C, rtype, 1, 1, len(rdata)) + rdata
        assert self.transport is not None
        self.transport.sendto(reply, addr)


def _port_free_on_both_loopbacks() -> int:
    for _ in range(20):
        port = free_port("127.0.0.1")
        try:
            with socket.socket(socket.AF_INET6) as s:
                s.bind(("::1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on both 127.0.0.1 and ::1")


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")
@pytest.mark.parametrize("resolution", ["localhost", "dns-server"])
async def test_round_robin_over_every_address_of_a_name(resolution: str) -> None:
    native = os.environ.get("GRPC_DNS_RESOLVER", "").lower() == "native"
    if resolution == "localhost" and native:
        hosts = {a[4][0] for a in socket.getaddrinfo("localhost", 80, proto=socket.IPPROTO_TCP)}
        if "::1" not in hosts:
            pytest.skip("GRPC_DNS_RESOLVER=native and localhost does not resolve to ::1 in /etc/hosts")
    if resolution == "dns-server" and native:
        pytest.skip("a DNS server in the target's authority needs gRPC's c-ares resolver (the default)")
    served = Counter[str]()

    def replica(name: str) -> Behavior:
        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            served[name] += 1
            return request

        return handle

    port = _port_free_on_both_loopbacks()
    loop = asyncio.get_running_loop()
    dns_transport, _ = await loop.create_datagram_endpoint(
        lambda: _TinyDns({"search.clipmind.test": ["127.0.0.1", "::1"]}), local_addr=("127.0.0.1", 0)
    )
    dns_port = dns_transport.get_extra_info("sockname")[1]
    # c-ares answers "localhost" with both loopbacks itself (RFC 6761), whatever /etc/hosts says.
    name = f"dns:///localhost:{port}" if resolution == "localhost" else (
        f"dns://127.0.0.1:{dns_port}/search.clipmind.test:{port}")
    try:
        async with (
            serving({"Echo": replica("v4")}, address=f"127.0.0.1:{port}"),
            serving({"Echo": replica("v6")}, address=f"[::1]:{port}"),
            channels() as chans,
        ):
            stub = chans.stub(EchoStub, name)
            for i in range(40):
                assert await stub.Echo(str(i).encode()) == str(i).encode()
    finally:
        dns_transport.close()
    assert served["v4"] > 0 and served["v6"] > 0, served
    assert served["v4"] + served["v6"] == 40
