"""Browsing a video: its clips in order (chapters, with thumbnails) and its transcript (timed cues), page by page.

The caller's scope decides as everywhere (``Principal.scope``): another user's video, a deleted one and one
that does not exist are the same NOT_FOUND. Pages follow the clip's or cue's index within the video (a keyset,
so a page never repeats or skips an item while the list is read), with tokens bound to the caller and video.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from services.common.errors import NotFound, invalid_field
from services.common.names import video_name
from services.common.paging import bound_to, decode_offset, encode_offset
from services.common.principal import Principal
from services.search.ports import ClipCatalog
from services.search.records import Clip, Segment

Item = TypeVar("Item", Clip, Segment)
CLIPS_PAGE = (50, 500)  # default, most
CUES_PAGE = (200, 1000)


def _size(requested: int, bounds: tuple[int, int]) -> int:
    default, most = bounds
    if requested < 0:
        raise invalid_field("page_size", "must not be negative")
    return min(requested or default, most)


class Browser:
    def __init__(self, catalog: ClipCatalog) -> None:
        self._catalog = catalog

    async def clips(self, video_id: uuid.UUID, caller: Principal, page_size: int = 0,
                    page_token: str = "") -> tuple[list[Clip], str]:
        """A page of the video's clips in play order, and the next page's token ("" at the end)."""
        return await self._page("ListClips", self._catalog.video_clips, CLIPS_PAGE, video_id, caller, page_size,
                                page_token)

    async def transcript(self, video_id: uuid.UUID, caller: Principal, page_size: int = 0,
                         page_token: str = "") -> tuple[list[Segment], str]:
        """A page of the video's transcript cues in time order, and the next page's token ("" at the end)."""
        return await self._page("ListTranscriptSegments", self._catalog.video_cues, CUES_PAGE, video_id, caller,
                                page_size, page_token)

    async def _page(self, method: str, read: Callable[..., Awaitable[list[Item]]], bounds: tuple[int, int],
                    video_id: uuid.UUID, caller: Principal, page_size: int, page_token: str) -> tuple[list[Item], str]:
        size = _size(page_size, bounds)
        binding = bound_to(caller.user_id, method, video_id)
        start = decode_offset(page_token, binding)
        await self._visible(video_id, caller)
        found = await read(video_id, owner=caller.scope, from_idx=start, limit=size + 1)
        page = found[:size]
        return page, encode_offset(page[-1].idx + 1, binding) if len(found) > size else ""

    async def _visible(self, video_id: uuid.UUID, caller: Principal) -> None:
        if not await self._catalog.has_video(video_id, owner=caller.scope):
            raise NotFound(f"video {video_id} not found", reason="VIDEO_NOT_FOUND",
                           metadata={"name": video_name(video_id)})
