"""The render stage of a compilation's job: its pieces cut from the owner's stored videos and joined into one MP4
(``services.media.compose``: stream copy when the sources allow it, else one filter graph), stored in the blob
store, and recorded on the compilation by the run that made it (fenced), which is when the job succeeds.

A source video deleted since the compilation was asked for fails the render (NOT_FOUND from ingest, turned into a
final failure by the runner); the compilation deleted while rendering stops it (its job goes with it).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path

from services.common.blobstore import BlobStore
from services.common.errors import InvalidArgument
from services.media.compose import compose
from services.media.compose_plan import ComposeOptions, Piece
from services.media.layout import compilation_key, compilation_prefix
from services.pipeline.ports import Compilations, VideoCatalog
from services.pipeline.records import Run
from services.pipeline.reporter import JobReporter

log = logging.getLogger(__name__)

RENDER_WEIGHTS = {"RENDER": 1.0}


class CompilationRenderer:
    def __init__(self, compilations: Compilations, catalog: VideoCatalog, reporter: JobReporter,
                 blobs: BlobStore) -> None:
        self._compilations = compilations
        self._catalog = catalog
        self._reporter = reporter
        self._blobs = blobs

    async def run(self, run: Run, stopping: asyncio.Event | None = None) -> None:
        compilation = await self._compilations.get(run.video_id, scope=None)
        report = self._reporter.for_run(run, RENDER_WEIGHTS, stopping)
        await report.start("RENDER", f"rendering {len(compilation.pieces)} clip(s)")
        paths: dict[object, Path] = {}
        for piece in compilation.pieces:  # every source still there, and where its bytes are
            if piece.video_id not in paths:
                source = await self._catalog.source(piece.video_id)
                paths[piece.video_id] = self._blobs.local_path(source.blob_key)
        o = compilation.options
        options = ComposeOptions(width=o.width, height=o.height, crossfade_s=o.crossfade_s, title=o.title_text,
                                 title_s=o.title_s, fade_in_s=o.fade_in_s, fade_out_s=o.fade_out_s)
        pieces = [Piece(paths[p.video_id], p.start_s, p.end_s) for p in compilation.pieces]

        reported = 0.0

        async def progress(fraction: float) -> None:  # an event per 5 %, not per ffmpeg progress line
            nonlocal reported
            if fraction - reported >= 0.05:
                reported = fraction
                await report.progress("RENDER", fraction, f"{fraction:.0%} rendered")

        with tempfile.TemporaryDirectory(prefix="clipmind-render-") as tmp:
            out = Path(tmp) / "output.mp4"
            try:
                result = await compose(pieces, options, out, progress=progress)
            except ValueError as bad:  # the stored sources do not fit the request after all: final, with why
                raise InvalidArgument(str(bad), reason="UNRENDERABLE_COMPILATION") from None
            size = out.stat().st_size
            key = compilation_key(compilation.id)
            await self._blobs.put_file(key, out, move=True)
        try:
            await self._compilations.rendered(compilation.id, run.run_id, output_key=key,
                                              duration_s=result.duration_s, size_bytes=size,
                                              render_method=result.method)
        except BaseException:  # cancelled or deleted meanwhile: the file is nobody's
            await self._blobs.delete_prefix(compilation_prefix(compilation.id))
            raise
        await report.finish("RENDER", f"{result.duration_s:.1f} s by {result.method.replace('_', ' ')}")
