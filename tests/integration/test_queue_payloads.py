"""The queue holds no pickled payloads: arq's job records are JSON in a real redis-server."""

from __future__ import annotations

import json
import pickle
import uuid

import pytest
import redis.asyncio as aioredis

from services.common.queue import ArqJobQueue, job_from_json, queue_key

pytestmark = pytest.mark.integration


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("unpickled: this would have run code",))


async def test_enqueued_jobs_are_json_not_pickle(redis_url: str) -> None:
    queue = await ArqJobQueue.connect(redis_url)
    client = aioredis.from_url(redis_url)
    try:
        job_id = uuid.uuid4()
        key = queue_key(job_id, 1)
        await queue.enqueue(job_id, key)
        raw = await client.get(f"arq:job:{key}")
        assert raw is not None and not raw.startswith(b"\x80")  # pickle's protocol marker
        record = json.loads(raw)
        assert record["f"] == "process_video" and record["a"] == [str(job_id)]
        assert await queue.state(key) == "queued"
        await client.delete(f"arq:job:{key}")
        await client.zrem("clipmind:queue:default", key)
    finally:
        await client.aclose()
        await queue.close()


def test_a_pickled_payload_is_refused_not_run(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError):  # json.JSONDecodeError: a pickle never reaches pickle.loads
        job_from_json(pickle.dumps({"f": "process_video", "a": [_Exploit()]}))
    assert "unpickled" not in capsys.readouterr().out
