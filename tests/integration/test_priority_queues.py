"""Priority queues on a real redis-server with real arq workers (issue 13): the entries ``ArqJobQueue`` writes
for high, standard and batch jobs are taken high first, and a batch backlog still moves while standard work keeps
arriving (``services.common.queue``: priority leads in one sorted set); a priority routed to a queue of its own
is served by the workers pinned to that queue, and each queue's depth is reported. Every test uses queues of its
own names, so the session's Redis is shared safely."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from arq import func
from arq.worker import Worker

from services.common.queue import (
    PRIORITIES,
    PROCESS_VIDEO,
    ArqJobQueue,
    PriorityWorker,
    QueueRoutes,
    arq_redis,
    job_from_json,
    job_to_json,
    queue_key,
)

pytestmark = pytest.mark.integration


def _routes(leads: dict[str, float] | None = None, **queues: str) -> QueueRoutes:
    shared = f"test:queue:{uuid.uuid4().hex[:8]}"
    return QueueRoutes({p: queues.get(p.lower(), shared) for p in PRIORITIES},
                       leads or {"HIGH": 3600.0, "STANDARD": 600.0, "BATCH": 0.0})


class Recorder:
    """The worker's job function: records which job ran (by the id enqueued), taking ``seconds`` each."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.ran: list[str] = []
        self.seconds = seconds
        self.started = asyncio.Event()

    async def run(self, ctx: dict, job_id: str, trace: dict | None = None) -> str:
        self.ran.append(job_id)
        self.started.set()
        if self.seconds:
            await asyncio.sleep(self.seconds)
        return "done"


def _worker(redis_url: str, queue_name: str, recorder: Recorder, *, burst: bool,
            worker_class: type[Worker] = PriorityWorker) -> Worker:
    return worker_class(functions=[func(recorder.run, name=PROCESS_VIDEO, max_tries=1)],
                        redis_pool=arq_redis(redis_url), queue_name=queue_name, burst=burst, max_jobs=1,
                        poll_delay=0.02, job_serializer=job_to_json, job_deserializer=job_from_json, keep_result=5,
                        handle_signals=False)


async def _stop(worker: Worker, running: asyncio.Task[None]) -> None:
    """Stop a live worker: its loop, then the job it may be running (cancelled with the loop or finished), then its
    connections. The job tasks are awaited here, so ``close`` does not gather a cancelled one again and raise."""
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
    worker.tasks.clear()
    await worker.close()


@pytest.fixture
async def queue_of(redis_url: str) -> AsyncIterator:  # type: ignore[type-arg]
    made: list[ArqJobQueue] = []

    def make(routes: QueueRoutes) -> ArqJobQueue:
        queue = ArqJobQueue(arq_redis(redis_url), routes)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        await queue.close()


async def _enqueue(queue: ArqJobQueue, name: str, priority: str) -> None:
    # The job id enqueued is the test's label: the recorder sees it as its argument.
    await queue.enqueue(name, queue_key(uuid.uuid4()), priority=priority)  # type: ignore[arg-type]


async def test_a_high_job_enqueued_after_a_batch_backlog_starts_next(redis_url: str, queue_of) -> None:  # type: ignore[no-untyped-def]
    routes = _routes()
    queue = queue_of(routes)
    for i in range(3):
        await _enqueue(queue, f"batch-{i}", "BATCH")
    await _enqueue(queue, "standard", "STANDARD")
    await _enqueue(queue, "high", "HIGH")
    recorder = Recorder()
    worker = _worker(redis_url, routes.queue("HIGH"), recorder, burst=True)
    try:
        await worker.main()
    finally:
        await worker.close()
    assert recorder.ran == ["high", "standard", "batch-0", "batch-1", "batch-2"]


async def test_a_busy_worker_takes_a_high_job_at_its_next_free_slot(redis_url: str, queue_of) -> None:  # type: ignore[no-untyped-def]
    """A live worker behind a batch backlog: the high job enqueued while the first batch job runs is the next one
    started. arq's own worker, which reads up to 100 entries at once and keeps their order, would run it last —
    shown here too, as the reason for ``PriorityWorker``."""
    for worker_class, expected in ((PriorityWorker, 1), (Worker, 5)):
        routes = _routes()
        queue = queue_of(routes)
        for i in range(5):
            await _enqueue(queue, f"batch-{i}", "BATCH")
        recorder = Recorder(seconds=0.2)
        worker = _worker(redis_url, routes.queue("HIGH"), recorder, burst=True, worker_class=worker_class)
        running = asyncio.create_task(worker.main())
        try:
            await asyncio.wait_for(recorder.started.wait(), 10)
            await _enqueue(queue, "high", "HIGH")
            await asyncio.wait_for(running, 10)
        finally:
            await _stop(worker, running)
        assert recorder.ran.index("high") == expected, (worker_class.__name__, recorder.ran)


async def test_a_batch_backlog_moves_while_standard_work_keeps_arriving(redis_url: str, queue_of) -> None:  # type: ignore[no-untyped-def]
    """Standard jobs arrive faster than the one worker slot drains them; still every batch job runs while they
    arrive: once a batch job has waited longer than standard's lead (0.5 s here), it comes before new standard
    work."""
    routes = _routes({"HIGH": 5.0, "STANDARD": 0.5, "BATCH": 0.0})
    queue = queue_of(routes)
    for i in range(4):
        await _enqueue(queue, f"batch-{i}", "BATCH")
    recorder = Recorder(seconds=0.1)
    worker = _worker(redis_url, routes.queue("BATCH"), recorder, burst=False)
    running = asyncio.create_task(worker.main())
    try:
        deadline = time.monotonic() + 4.0
        n = 0
        while time.monotonic() < deadline:  # 20 standard jobs a second against 10 a second drained
            await _enqueue(queue, f"standard-{n}", "STANDARD")
            n += 1
            await asyncio.sleep(0.05)
        ran = list(recorder.ran)
    finally:
        await _stop(worker, running)
    batch = [i for i, name in enumerate(ran) if name.startswith("batch")]
    assert len(batch) == 4, ran  # the whole backlog ran while standard work was still arriving
    assert ran[0].startswith("standard")  # standard first, as long as the backlog was young
    assert sum(name.startswith("standard") for name in ran) >= 10


async def test_a_priority_routed_to_its_own_queue_is_served_by_the_workers_pinned_to_it(  # type: ignore[no-untyped-def]
        redis_url: str, queue_of) -> None:
    high_queue = f"test:queue:high:{uuid.uuid4().hex[:8]}"
    routes = _routes(high=high_queue)
    queue = queue_of(routes)
    await _enqueue(queue, "urgent", "HIGH")
    await _enqueue(queue, "bulk-0", "BATCH")
    await _enqueue(queue, "bulk-1", "BATCH")
    depths = {name: (priorities, depth) for name, priorities, depth in await queue.queues()}
    assert depths == {high_queue: (["HIGH"], 1), routes.queue("BATCH"): (["STANDARD", "BATCH"], 2)}

    general, pinned = Recorder(), Recorder()
    for recorder, name in ((general, routes.queue("BATCH")), (pinned, high_queue)):
        worker = _worker(redis_url, name, recorder, burst=True)
        try:
            await worker.main()
        finally:
            await worker.close()
    assert (general.ran, pinned.ran) == (["bulk-0", "bulk-1"], ["urgent"])
    assert [depth for _, _, depth in await queue.queues()] == [0, 0]


async def test_a_retry_keeps_its_backoff_whatever_its_priority(redis_url: str, queue_of) -> None:  # type: ignore[no-untyped-def]
    routes = _routes()
    queue = queue_of(routes)
    key = queue_key(uuid.uuid4())
    await queue.enqueue("retried", key, defer_s=30, priority="HIGH")  # type: ignore[arg-type]
    assert await queue.state(key, priority="HIGH") == "deferred"  # not due for 30 s, lead or no lead
    key_now = queue_key(uuid.uuid4())
    await queue.enqueue("now", key_now, priority="HIGH")  # type: ignore[arg-type]
    assert await queue.state(key_now, priority="HIGH") == "queued"
