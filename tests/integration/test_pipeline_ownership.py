"""Ownership in the pipeline, against real PostgreSQL and Redis: a user sees and changes only their own jobs and
dead letters, an administrator every one; another user's job is NOT_FOUND exactly as a missing one (on Get,
Watch, Cancel and Retry alike), lists are filtered by owner in the query, page tokens are bound to the caller
and the filter, SubmitVideoJob requires the owner, and the worker writes the video's index as its owner's.

The servicers are called in process with a caller bound, as the authentication interceptor binds it
(``ServicerStub``); the worker's run uses the real ``JobRunner`` and ``VideoProcessor`` on a small rendered
video, with ingest's and search's sides as stubs that answer and record."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from clipmind.ingest.internal.v1 import ingest_internal_service_pb2 as ingest_pb
from clipmind.pipeline.internal.v1 import pipeline_internal_service_pb2 as internal_pb
from clipmind.pipeline.v1 import pipeline_service_pb2 as pb
from clipmind.search.internal.v1 import search_internal_service_pb2 as search_pb

from services.common import request_context
from services.common.blobstore import LocalBlobStore
from services.common.errors import ClipMindError, InvalidArgument, NotFound
from services.common.principal import Principal
from services.common.progress import ProgressBus
from services.common.queue import ArqJobQueue
from services.inference.ports import MODEL_NAMES, ModelStatus
from services.pipeline.compilation_store import CompilationStore
from services.pipeline.compilations import CompilationControl
from services.pipeline.ingest_client import IngestClient
from services.pipeline.internal_servicer import PipelineInternalServicer
from services.pipeline.job_store import JobStore
from services.pipeline.jobs import JobControl
from services.pipeline.processor import ProcessorConfig, VideoProcessor
from services.pipeline.records import DeadLetter
from services.pipeline.reporter import JobReporter
from services.pipeline.runs import JobRunner, RunPolicy
from services.pipeline.search_index import SearchIndexClient
from services.pipeline.servicer import PipelineServicer
from services.pipeline.watch import JobWatcher
from tests.db_setup import ServicerStub, service_db
from tests.media import SceneSpec, make_scene_video

pytestmark = pytest.mark.integration


@dataclass
class Pipeline:
    jobs: JobStore
    control: JobControl
    watcher: JobWatcher
    bus: ProgressBus
    queue: ArqJobQueue
    servicer: PipelineServicer
    internal: Any  # ServicerStub of PipelineInternalServicer, called as the system (ingest's relay)

    def as_(self, caller: Principal) -> Any:
        """PipelineService as ``caller`` calls it."""
        return ServicerStub(self.servicer, principal=caller)

    async def submit(self, owner: Principal) -> tuple[uuid.UUID, str]:
        """A new video of ``owner``'s and its job, as ingest submits it: (video id, job name)."""
        video_id = uuid.uuid4()
        answer = await self.internal.SubmitVideoJob(
            internal_pb.SubmitVideoJobRequest(video=f"videos/{video_id}", generation=1, owner=owner.name))
        return video_id, answer.job


@pytest.fixture
async def pipeline(pg_dsn: str, redis_url: str, tmp_path: Path) -> AsyncIterator[Pipeline]:
    pool = await service_db(pg_dsn, "pipeline")
    bus = ProgressBus.connect(redis_url)
    queue = await ArqJobQueue.connect(redis_url)
    jobs = JobStore(pool)
    control = JobControl(jobs, bus, queue)
    watcher = JobWatcher(jobs, bus, poll_s=0.2)
    blobs = LocalBlobStore(tmp_path / "blobs", "http://media.invalid")  # compilations: not exercised here
    compilations = CompilationControl(CompilationStore(pool), jobs, IngestClient(Ingest("", "")), queue, blobs,
                                      None)  # type: ignore[arg-type]
    try:
        yield Pipeline(jobs, control, watcher, bus, queue, PipelineServicer(control, watcher, compilations, blobs),
                       ServicerStub(PipelineInternalServicer(control)))
    finally:
        await queue.close()
        await bus.close()
        await pool.close()


def user() -> Principal:
    return Principal(uuid.uuid4(), "user")


def job_id(name: str) -> uuid.UUID:
    return uuid.UUID(name.removeprefix("jobs/"))


async def refusal(call: Any) -> ClipMindError:
    with pytest.raises(ClipMindError) as err:
        await call
    return err.value


def shape(err: ClipMindError, name: str) -> tuple[object, ...]:
    """Everything a caller learns from an error, with the job's id blanked out (the caller sent it)."""
    return (err.code, err.reason, err.message.replace(name.removeprefix("jobs/"), "<id>"),
            {k: v.replace(name, "<name>") for k, v in err.metadata.items()}, err.field_violations)


async def watch(p: Pipeline, caller: Principal, name: str, seen: list[pb.JobEvent]) -> None:
    """WatchJob as ``caller``, to its end; what it sent is left in ``seen`` even when it fails."""
    with request_context.bind(principal=caller):
        async for event in p.servicer.WatchJob(pb.WatchJobRequest(name=name), None):
            seen.append(event)


async def test_another_users_job_is_not_found_exactly_like_a_missing_one(pipeline: Pipeline) -> None:
    p, a, b = pipeline, user(), user()
    _, queued = await p.submit(a)
    _, cancelled = await p.submit(a)
    await p.as_(a).CancelJob(pb.CancelJobRequest(name=cancelled))  # has events; retryable by its owner
    missing = f"jobs/{uuid.uuid4()}"

    for name in (queued, cancelled):
        calls = {
            "GetJob": lambda n: p.as_(b).GetJob(pb.GetJobRequest(name=n)),
            "CancelJob": lambda n: p.as_(b).CancelJob(pb.CancelJobRequest(name=n)),
            "RetryJob": lambda n: p.as_(b).RetryJob(pb.RetryJobRequest(name=n)),
        }
        for method, call in calls.items():
            theirs, none = await refusal(call(name)), await refusal(call(missing))
            assert isinstance(theirs, NotFound), (method, theirs)
            assert shape(theirs, name) == shape(none, missing), method
        seen: list[pb.JobEvent] = []
        theirs = await refusal(watch(p, b, name, seen))
        assert seen == [], "a stream of another user's job sent something before its refusal"
        assert shape(theirs, name) == shape(await refusal(watch(p, b, missing, [])), missing)
        assert isinstance(theirs, NotFound)
    assert p.watcher.open_streams == 0 and p.bus.listened_jobs == 0

    # Nothing B tried changed A's jobs; A (and an administrator) see and follow them.
    assert (await p.as_(a).GetJob(pb.GetJobRequest(name=queued))).state == pb.Job.STATE_QUEUED
    admin = Principal(uuid.uuid4(), "admin")
    assert (await p.as_(admin).GetJob(pb.GetJobRequest(name=cancelled))).state == pb.Job.STATE_CANCELLED
    seen = []
    await watch(p, a, cancelled, seen)
    assert [e.job_state for e in seen] == [pb.Job.STATE_CANCELLED]
    retried = await p.as_(a).RetryJob(pb.RetryJobRequest(name=cancelled))
    assert retried.state == pb.Job.STATE_QUEUED
    assert (await p.as_(admin).CancelJob(pb.CancelJobRequest(name=queued))).state == pb.Job.STATE_CANCELLED


async def test_lists_hold_only_the_callers_jobs_and_dead_letters(pipeline: Pipeline) -> None:
    p, a, b, admin = pipeline, user(), user(), Principal(uuid.uuid4(), "admin")
    a_video, a_first = await p.submit(a)
    _, a_second = await p.submit(a)
    _, b_job = await p.submit(b)
    letters = {}
    for name in (a_first, b_job):
        job = await p.jobs.get(job_id(name), scope=None)
        letter = DeadLetter(uuid.uuid4(), job.id, job.video_id, "BROKEN: broken", 3, "BROKEN")
        await p.jobs.add_dead_letter(letter)
        letters[name] = f"deadLetters/{letter.id}"

    async def jobs_of(caller: Principal, filter: str = "") -> list[str]:
        names, token = [], ""
        while True:
            page = await p.as_(caller).ListJobs(pb.ListJobsRequest(page_size=500, page_token=token, filter=filter))
            names += [j.name for j in page.jobs]
            if not (token := page.next_page_token):
                return names

    async def letters_of(caller: Principal) -> list[str]:
        names, token = [], ""
        while True:
            page = await p.as_(caller).ListDeadLetters(pb.ListDeadLettersRequest(page_size=500, page_token=token))
            names += [d.name for d in page.dead_letters]
            if not (token := page.next_page_token):
                return names

    assert await jobs_of(a) == [a_second, a_first]  # newest first, and nobody else's
    assert await jobs_of(b) == [b_job]
    assert await jobs_of(b, f'video = "videos/{a_video}"') == []  # another user's video simply has no jobs
    assert await jobs_of(a, f'video = "videos/{a_video}"') == [a_first]
    assert await jobs_of(b, "state = QUEUED") == [b_job]
    assert {a_first, a_second, b_job} <= set(await jobs_of(admin))
    assert await jobs_of(admin, f'video = "videos/{a_video}"') == [a_first]

    assert await letters_of(a) == [letters[a_first]]
    assert await letters_of(b) == [letters[b_job]]
    assert set(letters.values()) <= set(await letters_of(admin))


async def test_page_tokens_are_bound_to_the_caller_the_method_and_the_filter(pipeline: Pipeline) -> None:
    p, a, b = pipeline, user(), user()
    names = [(await p.submit(a))[1] for _ in range(3)]
    for name in names:
        job = await p.jobs.get(job_id(name), scope=None)
        await p.jobs.add_dead_letter(DeadLetter(uuid.uuid4(), job.id, job.video_id, "boom", 1))

    first = await p.as_(a).ListJobs(pb.ListJobsRequest(page_size=1, filter="state = QUEUED"))
    assert [j.name for j in first.jobs] == [names[2]] and first.next_page_token
    token = first.next_page_token
    refused = [
        await refusal(p.as_(b).ListJobs(pb.ListJobsRequest(page_size=1, page_token=token, filter="state = QUEUED"))),
        await refusal(p.as_(a).ListJobs(pb.ListJobsRequest(page_size=1, page_token=token))),
        await refusal(p.as_(a).ListJobs(pb.ListJobsRequest(page_size=1, page_token=token, filter="state = FAILED"))),
        await refusal(p.as_(a).ListDeadLetters(pb.ListDeadLettersRequest(page_size=1, page_token=token))),
    ]
    for err in refused:
        assert isinstance(err, InvalidArgument) and err.reason == "PAGE_TOKEN_MISMATCH", err
        assert [v.field for v in err.field_violations] == ["page_token"]
    second = await p.as_(a).ListJobs(pb.ListJobsRequest(page_size=1, page_token=token, filter="state = QUEUED"))
    assert [j.name for j in second.jobs] == [names[1]]

    letters = await p.as_(a).ListDeadLetters(pb.ListDeadLettersRequest(page_size=1))
    assert len(letters.dead_letters) == 1 and letters.next_page_token
    err = await refusal(p.as_(b).ListDeadLetters(
        pb.ListDeadLettersRequest(page_size=1, page_token=letters.next_page_token)))
    assert isinstance(err, InvalidArgument) and err.reason == "PAGE_TOKEN_MISMATCH"
    err = await refusal(p.as_(a).ListJobs(pb.ListJobsRequest(page_size=1, page_token=letters.next_page_token)))
    assert isinstance(err, InvalidArgument) and err.reason == "PAGE_TOKEN_MISMATCH"


@pytest.mark.parametrize("owner", ["", "videos/" + str(uuid.UUID(int=7)), "users/not-a-uuid", "users/"])
async def test_submit_video_job_requires_its_owner(pipeline: Pipeline, owner: str) -> None:
    video_id = uuid.uuid4()
    err = await refusal(pipeline.internal.SubmitVideoJob(
        internal_pb.SubmitVideoJobRequest(video=f"videos/{video_id}", generation=1, owner=owner)))
    assert isinstance(err, InvalidArgument)
    assert [v.field for v in err.field_violations] == ["owner"]
    assert await pipeline.jobs.list_page(scope=None, limit=5, after=None, video_id=video_id) == []


async def test_a_repeated_submission_answers_with_the_first_job_and_its_owner(pipeline: Pipeline) -> None:
    p, a = pipeline, user()
    video = f"videos/{uuid.uuid4()}"
    first = await p.internal.SubmitVideoJob(internal_pb.SubmitVideoJobRequest(video=video, generation=1, owner=a.name))
    again = await p.internal.SubmitVideoJob(internal_pb.SubmitVideoJobRequest(video=video, generation=1, owner=a.name))
    assert first.created and not again.created and again.job == first.job
    assert (await p.jobs.get(job_id(first.job), scope=a.user_id)).owner_id == a.user_id


# -- the worker writes the index as the video's owner's ------------------------------------------------------


class Ingest:
    """Ingest's IngestInternalService as the worker calls it: the video's source (and owner), and a record of
    the processing updates it is sent."""

    def __init__(self, blob_key: str, owner: str) -> None:
        self.blob_key, self.owner = blob_key, owner
        self.updates: list[ingest_pb.UpdateVideoProcessingRequest] = []

    async def GetVideoSource(self, request: ingest_pb.GetVideoSourceRequest) -> ingest_pb.VideoSource:
        return ingest_pb.VideoSource(video=request.video, blob_key=self.blob_key, owner=self.owner)

    async def UpdateVideoProcessing(
        self, request: ingest_pb.UpdateVideoProcessingRequest
    ) -> ingest_pb.UpdateVideoProcessingResponse:
        self.updates.append(request)
        return ingest_pb.UpdateVideoProcessingResponse()


class Search:
    """Search's SearchInternalService as the worker calls it, recording every index it is sent."""

    def __init__(self) -> None:
        self.indexes: list[search_pb.ReplaceVideoIndexRequest] = []

    async def ReplaceVideoIndex(
        self, request: search_pb.ReplaceVideoIndexRequest
    ) -> search_pb.ReplaceVideoIndexResponse:
        self.indexes.append(request)
        return search_pb.ReplaceVideoIndexResponse()


class ModelsOff:
    """Inference with every model off (no weights): processing switches those modalities off and calls none."""

    backend = "torch"

    async def status(self) -> dict[str, ModelStatus]:
        return {name: ModelStatus(name, "off", detail="no weights in this test") for name in MODEL_NAMES}

    async def close(self) -> None:
        pass


async def run_job(p: Pipeline, tmp_path: Path, owner: Principal, ingest_says: str) -> tuple[str, Search, Ingest]:
    """Submit a job of ``owner``'s and run it through the real runner and stages, ingest answering that the video
    is ``ingest_says``'s: (the run's outcome, what search got, what ingest got)."""
    video_id, name = await p.submit(owner)
    blobs = LocalBlobStore(tmp_path / "blobs", "http://media.invalid")
    blob_key = f"videos/{video_id}/source.mp4"
    make_scene_video(blobs.local_path(blob_key), [SceneSpec(1.0, "testsrc2"), SceneSpec(1.0, "color=c=red")],
                     audio=False)
    ingest, search = Ingest(blob_key, ingest_says), Search()
    reporter = JobReporter(p.jobs, p.bus)
    processor = VideoProcessor(IngestClient(ingest), SearchIndexClient(search), reporter, blobs,
                               ModelsOff(), ProcessorConfig())  # type: ignore[arg-type]
    runner = JobRunner(p.jobs, reporter, p.queue, blobs, processor,
                       RunPolicy(lease_s=30.0, heartbeat_s=0.5, cancel_poll_s=0.2, retry_base_s=0.0), worker="test:1")
    job = await p.jobs.get(job_id(name), scope=owner.user_id)
    return await runner.run(job.id, job.queue_key), search, ingest


async def test_the_worker_indexes_the_video_as_its_owners(pipeline: Pipeline, tmp_path: Path) -> None:
    a = user()
    outcome, search, ingest = await run_job(pipeline, tmp_path, a, ingest_says=a.name)
    assert outcome == "succeeded"
    [index] = search.indexes
    assert index.owner == a.name and len(index.clips) == 2
    assert ingest.updates[-1].state == ingest_pb.PROCESSING_STATE_READY


async def test_a_run_whose_owner_ingest_contradicts_writes_no_index(pipeline: Pipeline, tmp_path: Path) -> None:
    a, b = user(), user()
    outcome, search, ingest = await run_job(pipeline, tmp_path, a, ingest_says=b.name)
    assert outcome == "failed"  # at once: re-running cannot make the two agree
    assert search.indexes == [] and ingest.updates == []
    [job] = await pipeline.control.list_jobs(a, limit=5, after=None)
    assert (job.state, job.failure_code) == ("FAILED", "OWNER_MISMATCH")
