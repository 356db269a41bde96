"""Stopping and restarting the mesh keeps videos and search results (runs last in the session)."""

from __future__ import annotations

import grpc
import pytest
from clipmind.ingest.v1 import ingest_service_pb2 as ingest_pb
from clipmind.ingest.v1 import ingest_service_pb2_grpc as ingest_grpc

from tests.e2e.clients import grpc_search

pytestmark = pytest.mark.e2e


def _snapshot(channel: grpc.Channel) -> tuple[list[str], list[tuple[str, float]]]:
    videos = ingest_grpc.IngestServiceStub(channel).ListVideos(
        ingest_pb.ListVideosRequest(page_size=100), timeout=10).videos
    hits = grpc_search(channel, "a dog jumping into the water", page_size=5).results
    return sorted(v.name for v in videos), [(h.clip.name, round(h.score, 4)) for h in hits]


def test_restart_keeps_videos_and_search_results(processed_video: dict, mesh, channel_factory) -> None:
    before = _snapshot(channel_factory())
    assert before[0] and before[1]
    mesh.restart()
    after = _snapshot(channel_factory())
    assert after == before
