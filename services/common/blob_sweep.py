"""Orphan blobs: everything a service stored under ``<collection>/<id>/`` whose row is gone (a process died between
writing the blobs and committing the row, or between deleting the row and the blobs). The service that owns the
rows sweeps its own prefix (ingest: ``videos/``, the pipeline: ``compilations/``).

Never a blob a row points to: a prefix goes only when no row has its id, and only when nothing was written under
it for ``grace_s`` — longer than any write of blobs before their row's commit takes (an upload's completion holds
its lock for at most 10 minutes), so a video or compilation being stored right now is never taken for an orphan.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable

from services.common.blobstore import BlobStore

log = logging.getLogger(__name__)

BATCH = 500


async def sweep_orphans(blobs: BlobStore, collection: str,
                        existing: Callable[[list[uuid.UUID]], Awaitable[Iterable[uuid.UUID]]], *,
                        grace_s: float) -> list[uuid.UUID]:
    """Delete the prefixes ``<collection>/<id>/`` untouched for ``grace_s`` whose id ``existing`` does not return
    (it answers, for a batch of ids, those that have a row); returns the ids deleted."""
    cutoff = time.time() - grace_s
    candidates: dict[uuid.UUID, str] = {}
    for prefix, changed in await blobs.list_prefixes(f"{collection}/"):
        try:
            blob_id = uuid.UUID(prefix.rstrip("/").rsplit("/", 1)[-1])
        except ValueError:
            continue  # not one of ours: left alone
        if changed < cutoff:
            candidates[blob_id] = prefix
    deleted: list[uuid.UUID] = []
    ids = list(candidates)
    for first in range(0, len(ids), BATCH):
        batch = ids[first:first + BATCH]
        kept = set(await existing(batch))
        for blob_id in batch:
            if blob_id not in kept:
                await blobs.delete_prefix(candidates[blob_id])
                deleted.append(blob_id)
    if deleted:
        log.warning("removed the blobs of %d %s without a row (older than %.0f s): %s", len(deleted), collection,
                    grace_s, ", ".join(str(i) for i in deleted[:10]) + (" ..." if len(deleted) > 10 else ""))
    return deleted
