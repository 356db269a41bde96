"""What the pipeline's domain (``jobs``, ``runs``, ``reporter``, ``watch``, ``processor``) needs from its
storage and from other services, as Protocols beside it. The adapters: ``job_store.JobStore`` (PostgreSQL),
``ingest_client.IngestClient`` (IngestInternalService) and ``search_index.SearchIndexClient``
(SearchInternalService)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Protocol

from services.pipeline.records import ClipSpan, Compilation, DeadLetter, Job, JobEvent, ProcessedVideo, VideoSource


class Jobs(Protocol):
    """Jobs, their ordered events and dead letters: the job state machine's storage.

    ``scope`` is whose jobs a call may see (``Principal.scope``: a user's id, or None for every owner); the store
    filters by it in its queries, and a job outside it is NOT_FOUND exactly as a missing one."""

    async def get(self, job_id: uuid.UUID, *, scope: uuid.UUID | None) -> Job:
        """NOT_FOUND (``JOB_NOT_FOUND``) when there is no such job or ``scope`` does not own it."""

    async def create(self, job: Job) -> bool:
        """Insert a QUEUED job unless one with its id exists; True when this call made it."""

    async def delete_for_video(self, video_id: uuid.UUID) -> int: ...

    async def purge_dead_letters(self, *, older_than_s: float) -> int: ...

    async def waiting_by_priority(self) -> dict[str, tuple[int, int]]:
        """(queued, running) jobs per priority."""

    async def list_page(
        self, *, scope: uuid.UUID | None, limit: int, after: tuple[datetime, uuid.UUID] | None,
        video_id: uuid.UUID | None = None, state: str | None = None,
    ) -> list[Job]: ...

    async def events(self, job_id: uuid.UUID, after_sequence: int = 0, *, scope: uuid.UUID | None) -> list[JobEvent]:
        ...

    async def record_event(
        self, job_id: uuid.UUID, *, stage: str | None, stage_state: str, progress: float | None, message: str,
        job_state: str | None = None, attempt: int | None = None, failure_reason: str | None = None,
        run_id: uuid.UUID | None = None,
    ) -> JobEvent:
        """Append the next event (FAILED_PRECONDITION ``JOB_ALREADY_FINISHED`` / ``RUN_SUPERSEDED``)."""

    async def cancel(self, job_id: uuid.UUID, *, scope: uuid.UUID | None, message: str = ...) -> JobEvent:
        """Cancel a job that has not ended, telling ingest (FAILED_PRECONDITION ``JOB_ALREADY_FINISHED``)."""

    async def claim(
        self, job_id: uuid.UUID, *, queue_key: str, run_id: uuid.UUID, worker: str, lease_s: float
    ) -> tuple[Job, JobEvent] | None: ...

    async def heartbeat(self, job_id: uuid.UUID, run_id: uuid.UUID, lease_s: float) -> bool: ...

    async def owns(self, job_id: uuid.UUID, run_id: uuid.UUID) -> bool: ...

    async def end_run(
        self, job_id: uuid.UUID, run_id: uuid.UUID, *, outcome: str, message: str, code: str = "",
        new_key: str = "", event_message: str | None = None,
    ) -> JobEvent | None: ...

    async def expired_runs(self, *, idle_s: float, limit: int = 100) -> list[Job]: ...

    async def take_over(self, job: Job, *, new_key: str) -> tuple[JobEvent, bool] | None: ...

    async def pending(self, *, idle_s: float, limit: int = 500) -> list[Job]: ...

    async def requeue(self, job_id: uuid.UUID, *, expected_key: str, new_key: str, message: str) -> JobEvent | None: ...

    async def reset_for_retry(self, job_id: uuid.UUID, new_key: str, *, scope: uuid.UUID | None,
                              priority: str | None = None) -> Job: ...

    async def dead_letters(
        self, *, scope: uuid.UUID | None, limit: int, after: tuple[datetime, uuid.UUID] | None
    ) -> list[DeadLetter]: ...


class VideoCatalog(Protocol):
    """Ingest's video records as processing reads and updates them (``ingest_client.IngestClient``)."""

    async def source(self, video_id: uuid.UUID) -> VideoSource:
        """Where the video's bytes are, and whose video it is; NOT_FOUND once deleted, UNAVAILABLE while ingest is
        away."""

    async def update(self, video_id: uuid.UUID, fence: int, state: str = "", **facts: object) -> None:
        """Record facts found by the run holding ``fence``; FAILED_PRECONDITION ``RUN_SUPERSEDED`` when a later
        run or a cancel updated the video already."""


class SearchIndex(Protocol):
    """The search service's index of videos (``search_index.SearchIndexClient``)."""

    async def replace(self, video_id: uuid.UUID, fence: int, result: ProcessedVideo, *, owner_id: uuid.UUID) -> None:
        """Replace everything indexed for the video, atomically, as the index of ``owner_id`` (the user whose
        searches find it); FAILED_PRECONDITION ``RUN_SUPERSEDED`` when a later run (larger fence) wrote it already,
        NOT_FOUND when the video is gone, UNAVAILABLE while the search service is away."""


class Compilations(Protocol):
    """Compilations and their render jobs (``compilation_store.CompilationStore``); ``scope`` as for jobs."""

    async def create(self, compilation: Compilation, job: Job) -> Compilation:
        """The compilation and its QUEUED render job, together."""

    async def get(self, compilation_id: uuid.UUID, *, scope: uuid.UUID | None) -> Compilation:
        """NOT_FOUND (``COMPILATION_NOT_FOUND``) when there is none or ``scope`` does not own it."""

    async def list_page(self, *, scope: uuid.UUID | None, limit: int,
                        after: tuple[datetime, uuid.UUID] | None) -> list[Compilation]: ...

    async def delete(self, compilation_id: uuid.UUID, *, scope: uuid.UUID | None) -> Compilation: ...

    async def rendered(self, compilation_id: uuid.UUID, run_id: uuid.UUID, *, output_key: str, duration_s: float,
                       size_bytes: int, render_method: str) -> None:
        """What the run made; FAILED_PRECONDITION ``RUN_SUPERSEDED`` once it no longer owns the job."""


class ClipSources(Protocol):
    """Where compilations asked for as clips or a search get their spans (``clip_sources.ClipSourcesClient``)."""

    async def spans(self, clip_ids: list[uuid.UUID], *, owner: uuid.UUID | None) -> dict[uuid.UUID, ClipSpan]:
        """The clips among ``clip_ids`` of ``owner``'s (None: anyone's), by id; others are left out."""

    async def search_results(self, search_id: uuid.UUID, *, user: uuid.UUID | None) -> list[uuid.UUID]:
        """The clips a logged search of ``user``'s (None: anyone's) ranked, in order; NOT_FOUND for none."""
