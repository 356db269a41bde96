"""asyncpg repository of compilations (pipeline schema, migration 0007), with their render jobs.

A compilation is created together with its render job, in one transaction, so neither exists without the other;
deleting the compilation deletes the job (foreign key, cascading to its events). Its state is read from the job
(the one state machine), its output facts are written by the render run that made them — only while that run owns
the job (fenced like every write of a run), in the same transaction as the owner's usage fact. Reads a caller makes
are scoped by owner inside the query (None: everyone's), another user's compilation being NOT_FOUND like a missing
one.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict
from datetime import datetime

import asyncpg

from services.common import usage_events
from services.common.db import Database
from services.common.errors import FailedPrecondition, NotFound
from services.common.names import compilation_name
from services.common.queue import queue_key
from services.pipeline.records import Compilation, CompilationOptions, CompilationPiece, Job

_SELECT = ("SELECT c.*, j.id AS job_id, j.state, j.failure_reason FROM compilations c "
           "JOIN jobs j ON j.compilation_id = c.id")


def _not_found(compilation_id: uuid.UUID) -> NotFound:
    return NotFound(f"compilation {compilation_id} not found", reason="COMPILATION_NOT_FOUND",
                    metadata={"name": compilation_name(compilation_id)})


def _compilation(row: asyncpg.Record) -> Compilation:
    pieces = [CompilationPiece(uuid.UUID(p["video"]), float(p["start_s"]), float(p["end_s"]),
                               uuid.UUID(p["clip"]) if p.get("clip") else None)
              for p in json.loads(row["pieces"])]
    return Compilation(
        row["id"], row["owner_id"], pieces, CompilationOptions(**json.loads(row["options"])), row["job_id"],
        row["state"], row["failure_reason"], row["output_key"], row["duration_s"], row["size_bytes"],
        row["render_method"], row["create_time"], row["update_time"])


class CompilationStore:
    def __init__(self, pool: Database) -> None:
        self._pool = pool

    async def create(self, compilation: Compilation, job: Job) -> Compilation:
        """Insert the compilation and its QUEUED render job ``job`` in one transaction."""
        pieces = [{"video": str(p.video_id), "start_s": p.start_s, "end_s": p.end_s,
                   "clip": str(p.clip_id) if p.clip_id else ""} for p in compilation.pieces]
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO compilations (id, owner_id, pieces, options) VALUES ($1, $2, $3::jsonb, $4::jsonb)",
                compilation.id, compilation.owner_id, json.dumps(pieces), json.dumps(asdict(compilation.options)))
            await conn.execute(
                "INSERT INTO jobs (id, compilation_id, state, max_attempts, queue_key, owner_id, priority) "
                "VALUES ($1, $2, 'QUEUED', $3, $4, $5, $6)",
                job.id, compilation.id, job.max_attempts, job.queue_key or queue_key(job.id), compilation.owner_id,
                job.priority)
        return await self.get(compilation.id, scope=None)

    async def get(self, compilation_id: uuid.UUID, *, scope: uuid.UUID | None) -> Compilation:
        row = await self._pool.fetchrow(
            f"{_SELECT} WHERE c.id = $1 AND ($2::uuid IS NULL OR c.owner_id = $2)", compilation_id, scope)
        if row is None:
            raise _not_found(compilation_id)
        return _compilation(row)

    async def list_page(self, *, scope: uuid.UUID | None, limit: int,
                        after: tuple[datetime, uuid.UUID] | None) -> list[Compilation]:
        """``scope``'s compilations (None: everyone's), newest first, keyset-paginated by (create_time, id)."""
        args: list[object] = [scope, limit]
        where = "($1::uuid IS NULL OR c.owner_id = $1)"
        if after is not None:
            args += list(after)
            where += " AND (c.create_time, c.id) < ($3, $4)"
        rows = await self._pool.fetch(
            f"{_SELECT} WHERE {where} ORDER BY c.create_time DESC, c.id DESC LIMIT $2", *args)
        return [_compilation(r) for r in rows]

    async def existing(self, compilation_ids: list[uuid.UUID]) -> set[uuid.UUID]:
        """Those of ``compilation_ids`` that have a row (the orphan-blob sweep)."""
        rows = await self._pool.fetch("SELECT id FROM compilations WHERE id = ANY($1::uuid[])", compilation_ids)
        return {row["id"] for row in rows}

    async def delete(self, compilation_id: uuid.UUID, *, scope: uuid.UUID | None) -> Compilation:
        """Delete the compilation (its job and events with it); NOT_FOUND outside ``scope``."""
        found = await self.get(compilation_id, scope=scope)
        await self._pool.execute("DELETE FROM compilations WHERE id = $1", compilation_id)
        return found

    async def rendered(self, compilation_id: uuid.UUID, run_id: uuid.UUID, *, output_key: str, duration_s: float,
                       size_bytes: int, render_method: str) -> None:
        """Record what the render run ``run_id`` made, while it still owns the job (FAILED_PRECONDITION
        ``RUN_SUPERSEDED`` otherwise), with the owner's usage fact, in one transaction."""
        async with self._pool.acquire() as conn, conn.transaction():
            owner = await conn.fetchval(
                "SELECT c.owner_id FROM compilations c JOIN jobs j ON j.compilation_id = c.id "
                "WHERE c.id = $1 AND j.run_id = $2 AND j.state = 'RUNNING' FOR UPDATE OF j", compilation_id, run_id)
            if owner is None:
                raise FailedPrecondition("this run no longer owns the compilation's job (cancelled, taken over or "
                                         "deleted)", reason="RUN_SUPERSEDED")
            await conn.execute(
                "UPDATE compilations SET output_key = $2, duration_s = $3, size_bytes = $4, render_method = $5, "
                "update_time = now() WHERE id = $1",
                compilation_id, output_key, duration_s, size_bytes, render_method)
            await usage_events.add(conn, usage_events.COMPILATION_RENDERED, owner, size_bytes=size_bytes,
                                   seconds=duration_s)
