"""WatchJob over REST through Envoy: the heartbeat field is part of the contract Envoy transcodes, and a
finished job's stream ends normally. (Heartbeats on a quiet stream are timed in
tests/integration/test_watch_streams.py, where the heartbeat period can be made short.)"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import httpx
import pytest
from google.protobuf import descriptor_pb2

from services.launcher import Endpoints
from services.pipeline.job_store import JobStore
from services.pipeline.records import Job
from tests.db_setup import service_db

pytestmark = pytest.mark.e2e

DESCRIPTORS = Path(__file__).resolve().parents[2] / "gen" / "descriptors" / "clipmind.binpb"


async def _insert_job(database_url: str, owner: uuid.UUID) -> uuid.UUID:
    job_id = uuid.uuid4()
    pool = await service_db(database_url, "pipeline")
    try:
        await JobStore(pool).create(Job(job_id, uuid.uuid4(), "QUEUED", owner_id=owner))
    finally:
        await pool.close()
    return job_id


def test_the_transcoded_contract_has_the_heartbeat_field() -> None:
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes()).file
    (job_event,) = [m for f in files if f.package == "clipmind.pipeline.v1" for m in f.message_type
                    if m.name == "JobEvent"]
    (field,) = [f for f in job_event.field if f.name == "heartbeat"]
    assert (field.number, field.type, field.json_name) == (9, field.TYPE_BOOL, "heartbeat")


def test_a_finished_jobs_stream_ends_normally_over_rest(
    endpoints: Endpoints, rest: httpx.Client, user_id: uuid.UUID
) -> None:
    job_id = asyncio.run(_insert_job(endpoints.database_url, user_id))  # no queue entry: nothing runs it
    cancelled = rest.post(f"/v1/jobs/{job_id}:cancel", json={})
    assert cancelled.status_code == 200, cancelled.text

    with rest.stream("GET", f"/v1/jobs/{job_id}:watch", timeout=30) as response:
        assert response.status_code == 200
        body = response.read().decode()
    events = json.loads(body)  # the transcoder streams a JSON array, closed when the stream ends
    assert [(e["sequence"], e["jobState"]) for e in events] == [("1", "STATE_CANCELLED")]
    assert not any(e.get("heartbeat") for e in events)

    resumed = rest.get(f"/v1/jobs/{job_id}:watch", params={"afterSequence": "1"}, timeout=30)
    assert resumed.status_code == 200
    assert json.loads(resumed.text or "[]") == []
