"""What the search domain (``searcher``) needs from its storage and from analytics, as Protocols beside it: the
adapters are ``clip_store.ClipStore`` (PostgreSQL), ``vectors.PgVectorIndex`` (pgvector; a Pinecone index is
another ``VectorIndex``) and ``search_log.SearchLogBuffer`` (the outbox to analytics)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import numpy as np

from services.search.records import Clip, SearchRecord, Segment


@dataclass(frozen=True)
class VectorItem:
    id: uuid.UUID
    video_id: uuid.UUID
    owner_id: uuid.UUID  # the user who owns the video: queries filter by it
    vector: np.ndarray


@dataclass(frozen=True)
class VectorHit:
    id: uuid.UUID
    video_id: uuid.UUID
    score: float  # cosine similarity


class VectorIndex(Protocol):
    """One vector per item id in a named collection ("transcript", "visual"), each tagged with its model and
    its owner."""

    async def upsert(
        self, collection: str, model: str, items: Sequence[VectorItem], *, conn: Any = None
    ) -> None: ...

    async def query(
        self,
        collection: str,
        model: str,
        vector: np.ndarray,
        top_k: int,
        video_ids: Sequence[uuid.UUID] | None = None,
        *,
        owner: uuid.UUID | None,
    ) -> list[VectorHit]:
        """The ``top_k`` items of ``model`` nearest ``vector``, best first, among those ``owner`` owns (None:
        everyone's, for administrators and the system) and, with ``video_ids``, of those videos.

        The owner is a filter of the retrieval itself, never of its results: an index that filters after an
        approximate scan must still give a user who owns a small share of the collection their best matches
        (pgvector: ``vectors.PgVectorIndex`` chooses per query; Pinecone: a metadata filter on the owner).
        ``owner`` has no default so that no caller forgets it."""

    async def scores(
        self, collection: str, model: str, vector: np.ndarray, ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, float]: ...

    async def get(self, collection: str, item_id: uuid.UUID) -> tuple[str, np.ndarray] | None: ...


class ClipCatalog(Protocol):
    """Clips and transcript segments as search reads them, with what results show of their videos.

    Every read takes ``owner``, the caller's scope (``Principal.scope``: their user id, or None for
    administrators and the system), and filters by it in its query: another user's clip is simply not there."""

    async def get(self, clip_id: uuid.UUID, *, owner: uuid.UUID | None) -> Clip:
        """NOT_FOUND (``CLIP_NOT_FOUND``) when there is no such clip, or ``owner`` does not own it (the same
        answer, so that nobody learns which ids exist)."""

    async def segments_with_clips(
        self, segment_ids: Sequence[uuid.UUID], *, owner: uuid.UUID | None
    ) -> dict[uuid.UUID, Segment]: ...

    async def clips_for_search(
        self, clip_ids: Sequence[uuid.UUID], *, owner: uuid.UUID | None, min_duration_s: float = 0,
        max_duration_s: float = 0, created_after: datetime | None = None, created_before: datetime | None = None,
    ) -> dict[uuid.UUID, Clip]:
        """The clips among ``clip_ids`` that ``owner`` owns, of READY videos, that pass the filters, by id."""

    async def segment_ids_by_clip(
        self, clip_ids: Sequence[uuid.UUID], *, owner: uuid.UUID | None
    ) -> dict[uuid.UUID, list[uuid.UUID]]: ...


class SearchLog(Protocol):
    """Where searches are logged (analytics, through ``search_log.SearchLogBuffer``). ``record`` must not
    block or fail: logging never adds latency to a search."""

    def record(self, entry: SearchRecord) -> None: ...
