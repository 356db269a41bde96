"""What the search domain (``searcher``) needs from its storage and from analytics, as Protocols beside it: the
adapters are ``clip_store.ClipStore`` (PostgreSQL), ``vectors.PgVectorIndex`` (pgvector writes),
``retrieval.PgRetrieval`` (one statement per signal: pgvector's filtered HNSW scans and PostgreSQL full-text
search) and ``search_log.SearchLogBuffer`` (the outbox to analytics)."""

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
    clip_id: uuid.UUID | None = None  # a visual vector's clip (its id is its keyframe's); unused for transcripts


class VectorIndex(Protocol):
    """The write side of the vectors: one vector per item id in a named collection ("transcript", "visual"),
    each tagged with its model and its owner. Searches read them through ``Retrieval``."""

    async def upsert(
        self, collection: str, model: str, items: Sequence[VectorItem], *, conn: Any = None
    ) -> None: ...

    async def get(self, collection: str, item_id: uuid.UUID) -> tuple[str, np.ndarray] | None: ...

    async def clip_visual(self, clip_id: uuid.UUID) -> tuple[str, np.ndarray] | None:
        """(model, vector) of what the clip looks like over all its keyframes; None without visual vectors."""


@dataclass(frozen=True)
class ClipFilter:
    """Which clips a retrieval may propose. ``owner`` is the caller's scope (``Principal.scope``: their user id,
    or None for administrators and the system) and has no default, so that no caller forgets it. Durations are
    the clip's own (end - start); the times are its video's upload time."""

    owner: uuid.UUID | None
    video_ids: tuple[uuid.UUID, ...] = ()
    min_duration_s: float = 0.0
    max_duration_s: float = 0.0
    created_after: datetime | None = None
    created_before: datetime | None = None
    exclude: uuid.UUID | None = None  # one clip left out (the clip a similar-clips search starts from)


@dataclass(frozen=True)
class Match:
    """A clip one signal proposes: its score in that signal and the moment that matched: for the transcript
    signals the cue (``text``, ``start_s``, ``end_s``, ``cue_id``), for the visual signal the best keyframe (the
    stretch of the scene it stands for in ``start_s``/``end_s``, its image in ``thumbnail_key``; no text)."""

    clip_id: uuid.UUID
    video_id: uuid.UUID
    clip_start_s: float
    score: float
    text: str = ""
    start_s: float = 0.0
    end_s: float = 0.0
    cue_id: uuid.UUID | None = None
    thumbnail_key: str = ""


class Retrieval(Protocol):
    """The read side of search: per signal one query that finds the best clips passing ``ClipFilter`` (owner,
    videos, clip duration, upload time, READY videos only) inside the index scan, never by dropping results
    afterwards — a user who owns a small share of the index, or a selective filter, still gets full pages.
    Each returns at most ``limit`` matches, one per clip, best first."""

    async def visual(self, model: str, vector: np.ndarray, limit: int, where: ClipFilter) -> list[Match]:
        """Clips by the CLIP similarity of their best keyframe's vector (of ``model``) to ``vector``."""

    async def transcript(self, model: str, vector: np.ndarray, limit: int, where: ClipFilter) -> list[Match]:
        """Clips by the Sentence-BERT similarity of their best cue (vectors of ``model``) to ``vector``."""

    async def lexical(self, query: str, limit: int, where: ClipFilter) -> list[Match]:
        """Clips by full-text match of ``query``'s words and quoted phrases in their best cue; rare words count
        more than common ones. No match: an empty list."""


class ClipCatalog(Protocol):
    """Clips as search shows them, with what results show of their videos.

    Every read takes ``owner``, the caller's scope (``Principal.scope``: their user id, or None for
    administrators and the system) and filters by it in its query: another user's clip is simply not there."""

    async def get(self, clip_id: uuid.UUID, *, owner: uuid.UUID | None) -> Clip:
        """NOT_FOUND (``CLIP_NOT_FOUND``) when there is no such clip, or ``owner`` does not own it (the same
        answer, so that nobody learns which ids exist)."""

    async def get_many(self, clip_ids: Sequence[uuid.UUID], *, owner: uuid.UUID | None) -> dict[uuid.UUID, Clip]:
        """The clips among ``clip_ids`` that ``owner`` owns, of READY videos, by id (missing ones left out)."""

    async def has_video(self, video_id: uuid.UUID, *, owner: uuid.UUID | None) -> bool:
        """Whether the video is known here, not deleted, and ``owner``'s (None: anyone's)."""

    async def video_clips(self, video_id: uuid.UUID, *, owner: uuid.UUID | None, from_idx: int,
                          limit: int) -> list[Clip]:
        """The video's clips from index ``from_idx`` on, in order, at most ``limit``."""

    async def video_cues(self, video_id: uuid.UUID, *, owner: uuid.UUID | None, from_idx: int,
                         limit: int) -> list[Segment]:
        """The video's transcript cues from index ``from_idx`` on, in order, at most ``limit``."""

    async def cues_around(self, cue_ids: Sequence[uuid.UUID], *, owner: uuid.UUID | None,
                          reach: int) -> dict[uuid.UUID, list[Segment]]:
        """For each cue, the cues of its video from ``reach`` before it to ``reach`` after it, in order (itself
        included); cues ``owner`` does not own are left out."""


class QueryCache(Protocol):
    """Fused rankings by query (``query_cache.QueryCache``: in-process LRU and Redis, made with the searcher's
    ``encode_ranking``/``decode_ranking``), per scope (an owner, or None for the administrators' everyone),
    emptied for an owner whenever their searchable clips change."""

    async def get(self, owner: uuid.UUID | None, key: str) -> Any:
        """A lookup: ``.value`` the ranking or None, ``.seen`` what ``put`` must be given back."""

    async def put(self, owner: uuid.UUID | None, key: str, value: Any, seen: Any) -> None:
        """Store a ranking computed after ``get`` missed, unless the scope was invalidated since."""

    async def invalidate(self, owner: uuid.UUID) -> None: ...


class SearchLog(Protocol):
    """Where searches are logged (analytics, through ``search_log.SearchLogBuffer``). ``record`` must not
    block or fail: logging never adds latency to a search."""

    def record(self, entry: SearchRecord) -> None: ...
