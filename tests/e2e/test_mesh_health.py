"""Every service answers gRPC health checks and server reflection, and lists what it serves."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

pytestmark = pytest.mark.e2e

EXPECTED = {
    "ingest": {"clipmind.ingest.v1.IngestService"},
    "identity": {"clipmind.identity.v1.IdentityService"},
    "pipeline": {"clipmind.pipeline.v1.PipelineService"},
    "search": {"clipmind.search.v1.SearchService"},
    "analytics": {"clipmind.analytics.v1.AnalyticsService"},
}


@pytest.mark.parametrize("service", sorted(EXPECTED))
def test_health_and_reflection(endpoints, service: str) -> None:  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(endpoints.grpc[service]) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ["", *EXPECTED[service]]:
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        listed = {s.name for reply in replies for s in reply.list_services_response.service}
        assert EXPECTED[service] <= listed
        assert "grpc.health.v1.Health" in listed
