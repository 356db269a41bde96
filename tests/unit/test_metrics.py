"""The metrics of every process: the gRPC server interceptor (a real grpc.aio server in process, with the error
interceptor behind it as ``run_server`` composes them), the exposition over HTTP, and the live collectors."""

from __future__ import annotations

import asyncio
import gc
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from services.common.circuit import CircuitBreaker
from services.common.errors import NotFound
from services.common.grpc_errors import ErrorInterceptor
from services.common.grpc_metrics import MetricsInterceptor, split_method
from services.common.metrics import start_metrics_server, track_circuit, track_pool
from services.launcher.process import free_port

SERVICE = "clipmind.test.v1.MetricsTestService"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _identity(raw: bytes) -> bytes:
    return raw


async def ok(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def missing(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise NotFound("no such thing", reason="THING_NOT_FOUND")


async def broken(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise RuntimeError("boom")


async def ticks(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for _ in range(3):
        yield b"tick"
        await asyncio.sleep(0.05)


async def forever(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"first"
    await asyncio.sleep(3600)


def _handlers() -> grpc.GenericRpcHandler:
    kw: dict[str, Any] = {"request_deserializer": _identity, "response_serializer": _identity}
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Ok": grpc.unary_unary_rpc_method_handler(ok, **kw),
        "Missing": grpc.unary_unary_rpc_method_handler(missing, **kw),
        "Broken": grpc.unary_unary_rpc_method_handler(broken, **kw),
        "Ticks": grpc.unary_stream_rpc_method_handler(ticks, **kw),
        "Forever": grpc.unary_stream_rpc_method_handler(forever, **kw),
    })


@pytest.fixture
async def server() -> AsyncIterator[str]:
    srv = grpc.aio.server(interceptors=[MetricsInterceptor(), ErrorInterceptor()])
    srv.add_generic_rpc_handlers((_handlers(),))
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    yield f"127.0.0.1:{port}"
    await srv.stop(None)


def test_split_method() -> None:
    assert split_method("/clipmind.search.v1.SearchService/Search") == ("clipmind.search.v1.SearchService", "Search")


async def test_counts_calls_by_method_and_status_code(server: str) -> None:
    labels = {"service": SERVICE}
    before = {name: sample("clipmind_grpc_server_requests_total", **labels, method=name, code=code)
              for name, code in (("Ok", "OK"), ("Missing", "NOT_FOUND"), ("Broken", "INTERNAL"))}
    latency_before = sample("clipmind_grpc_server_request_duration_seconds_count", **labels, method="Ok")
    async with grpc.aio.insecure_channel(server) as channel:
        for _ in range(2):
            assert await channel.unary_unary(f"/{SERVICE}/Ok")(b"x") == b"x"
        with pytest.raises(grpc.aio.AioRpcError) as missed:
            await channel.unary_unary(f"/{SERVICE}/Missing")(b"x")
        assert missed.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await channel.unary_unary(f"/{SERVICE}/Broken")(b"x")
        assert failed.value.code() == grpc.StatusCode.INTERNAL
        with pytest.raises(grpc.aio.AioRpcError) as unknown:  # not registered: no labels for it
            await channel.unary_unary(f"/{SERVICE}/Nope")(b"x")
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
    await asyncio.sleep(0.1)
    assert sample("clipmind_grpc_server_requests_total", **labels, method="Ok", code="OK") == before["Ok"] + 2
    assert sample("clipmind_grpc_server_requests_total", **labels, method="Missing", code="NOT_FOUND") == \
        before["Missing"] + 1
    assert sample("clipmind_grpc_server_requests_total", **labels, method="Broken", code="INTERNAL") == \
        before["Broken"] + 1
    assert sample("clipmind_grpc_server_request_duration_seconds_count", **labels, method="Ok") == latency_before + 2
    exposed = {s.labels.get("method") for m in REGISTRY.collect() if m.name == "clipmind_grpc_server_requests"
               for s in m.samples}
    assert "Nope" not in exposed


async def test_streams_are_in_flight_until_they_end(server: str) -> None:
    labels = {"service": SERVICE}
    async with grpc.aio.insecure_channel(server) as channel:
        assert [m async for m in channel.unary_stream(f"/{SERVICE}/Ticks")(b"")] == [b"tick"] * 3
        await asyncio.sleep(0.1)
        assert sample("clipmind_grpc_server_requests_total", **labels, method="Ticks", code="OK") >= 1
        assert sample("clipmind_grpc_server_streams_in_flight", **labels, method="Ticks") == 0

        call = channel.unary_stream(f"/{SERVICE}/Forever")(b"")
        assert await call.read() == b"first"
        assert sample("clipmind_grpc_server_streams_in_flight", **labels, method="Forever") == 1
        call.cancel()
        for _ in range(50):
            await asyncio.sleep(0.05)
            if sample("clipmind_grpc_server_streams_in_flight", **labels, method="Forever") == 0:
                break
        assert sample("clipmind_grpc_server_streams_in_flight", **labels, method="Forever") == 0
        assert sample("clipmind_grpc_server_requests_total", **labels, method="Forever", code="CANCELLED") == 1


class FakePool:
    def get_size(self) -> int:
        return 4

    def get_idle_size(self) -> int:
        return 1

    def get_max_size(self) -> int:
        return 10


class Owner:
    def __init__(self) -> None:
        self.pool = FakePool()
        self.breaker = CircuitBreaker(1, 60.0)


def test_live_collectors_read_pools_and_breakers_and_forget_dropped_owners() -> None:
    owner = Owner()
    track_pool(owner, "unit_pool", lambda o: o.pool)
    track_circuit(owner, "unit:8001", lambda o: o.breaker)
    assert sample("clipmind_db_pool_size", pool="unit_pool") == 4
    assert sample("clipmind_db_pool_in_use", pool="unit_pool") == 3
    assert sample("clipmind_db_pool_max_size", pool="unit_pool") == 10
    assert sample("clipmind_triton_circuit_state", target="unit:8001", state="closed") == 1
    owner.breaker.record_failure()
    assert sample("clipmind_triton_circuit_state", target="unit:8001", state="open") == 1
    assert sample("clipmind_triton_circuit_state", target="unit:8001", state="closed") == 0
    del owner
    gc.collect()
    assert REGISTRY.get_sample_value("clipmind_db_pool_size", {"pool": "unit_pool"}) is None


def test_exposition_serves_the_registry_over_http() -> None:
    assert start_metrics_server(0, "127.0.0.1") is None  # 0: off
    port = free_port()
    stop = start_metrics_server(port, "127.0.0.1")
    assert stop is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    finally:
        stop()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"clipmind_grpc_server_requests", "clipmind_worker_stage_duration_seconds",
            "clipmind_search_cache_lookups"} <= names
