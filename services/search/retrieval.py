"""The PostgreSQL implementation of ``ports.Retrieval``: per signal one statement that finds candidates, applies
every filter, scores them and picks each clip's best transcript cue.

**Filtered vector search.** pgvector 0.8's iterative index scans (``hnsw.iterative_scan = relaxed_order``, set
on every connection of the search pool, see ``CONNECTION_SETTINGS``) keep an HNSW scan going until the
statement's ``LIMIT`` is filled *after* its filters and joins (owner, videos, clip duration, upload time, READY),
instead of stopping at ``hnsw.ef_search`` candidates and filtering those: a user who owns 0.1 % of the clips, or
a narrow date window, still gets a full page. The planner still chooses: a filter it knows to be selective (a
small owner's rows through the btree index on (owner_id, model), or a few videos) is ranked exactly, without
HNSW. Relaxed order means the scan may return rows slightly out of order; each statement re-sorts its rows by
exact distance (the ``MATERIALIZED`` CTE pgvector's documentation recommends).

An iterative scan gives up after ``hnsw.max_scan_tuples`` (20,000) tuples. A statement that returned fewer rows
than asked on a table larger than that may have been cut short by a very selective filter the planner did not
see (a narrow date window over a large collection): it is run again exactly (``ORDER BY distance + 0`` does not
match the index's ordering, so the planner ranks the filtered rows instead). On a table within the limit a short
answer is complete.

**Lexical match.** Transcript cues carry a ``tsvector`` (``tsv``, text search configuration from the settings,
``english`` by default: stemming and stop words) with a GIN index. The query is split into units — words, and
phrases in double quotes — each parsed by ``websearch_to_tsquery``; a ``-word`` or ``-"phrase"`` excludes cues
that contain it. A cue scores the sum of the inverse document frequencies of the units it contains, so a rare
word or a name counts far more than a common word, a quoted phrase more than its words apart, and a cue with
more of the query's units more than one with fewer. The score is the cube of that sum over the sum for all the
query's units: 1 for a cue that contains them all (a one-word or quoted-phrase query it contains), near 1 for one
with the query's only rare word, near 0 for one that shares a common word or two with a longer question (an
absolute scale, so fusion uses it as it is). The cube was chosen on the evaluation set (bench/eval_search.py): a
partial match of common words is weak evidence, and a linear share let such matches outvote Sentence-BERT on
paraphrases (R@1 0.80 linear, 0.84 squared, 0.86 cubed, with rare words and names found first in all three).
Document frequencies are counted among the caller's own cues (nobody learns another user's words) up to
``DF_CAP`` (a capped count is an index probe, not a scan; any unit that common is simply common):
idf = ln(1 + DF_CAP / df).

The work is bounded however common the words: the cues scored are those holding one of the query's uncommon
units (each in fewer than ``DF_CAP`` cues), each scored over all units; a query of common units only scores at
most ``COMMON_POOL`` cues that hold them all. A cue holding only common units of a query that also has an
uncommon one is not scored: its cubed share would be near 0 anyway. (On 100,000 cues of a 60-word vocabulary,
where every word is in ~13,000 cues, scoring every cue with any unit took 572 ms p50.)
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np

from services.common.db import Database
from services.search.ports import ClipFilter, Match

# asyncpg server_settings for the search pool: filtered HNSW scans continue until their LIMIT is filled; every
# statement is planned for its own parameters (asyncpg prepares statements, and PostgreSQL would otherwise switch
# to one generic plan after five runs: the same plan for an owner of 100 clips as for one of 100,000, where the
# choice between the HNSW scan and the owner's btree index is the whole point).
CONNECTION_SETTINGS = {"hnsw.iterative_scan": "relaxed_order", "hnsw.ef_search": "100",
                       "plan_cache_mode": "force_custom_plan"}
# pgvector's default hnsw.max_scan_tuples: where an iterative scan gives up.
MAX_SCAN_TUPLES = 20_000
# Document frequencies are counted up to this many cues.
DF_CAP = 1000
# A query of common units only (each in DF_CAP cues or more) scores at most this many cues that hold them all.
COMMON_POOL = 5 * DF_CAP
# Units of one lexical query (words and quoted phrases) beyond this are ignored.
MAX_UNITS = 16
TABLE_SIZE_TTL_S = 60.0

_UNIT = re.compile(r'(-?)"([^"]*)"|(-?)(\S+)')
_OPERATORS = {"or", "and", "not"}


def lexical_units(query: str) -> tuple[list[str], list[str]]:
    """(units to match, units to exclude): quoted phrases keep their quotes (``websearch_to_tsquery`` makes them
    phrase queries), words stand alone; ``or``/``and``/``not`` are connectives, not words to find."""
    wanted: list[str] = []
    excluded: list[str] = []
    for m in _UNIT.finditer(query):
        if m.group(2) is not None:
            negated, unit = m.group(1) == "-", f'"{m.group(2).strip()}"'
            if unit == '""':
                continue
        else:
            negated, unit = m.group(3) == "-" and len(m.group(4)) > 0, m.group(4)
            if unit.lower() in _OPERATORS or not unit.strip('-"'):
                continue
            unit = unit.replace('"', "")
        (excluded if negated else wanted).append(unit)
    return wanted[:MAX_UNITS], excluded[:MAX_UNITS]


class _Conditions:
    """SQL conditions of a ``ClipFilter`` with their arguments, numbered after the statement's own."""

    def __init__(self, args: list[Any]) -> None:
        self.args = args
        self.sql: list[str] = ["v.state = 'READY'"]

    def add(self, template: str, value: Any) -> None:
        self.args.append(value)
        self.sql.append(template.format(f"${len(self.args)}"))

    def of(self, where: ClipFilter, row: str) -> str:
        """Conditions on the scanned table ``row`` (owner, video: its own indexed columns), the clip ``c`` and
        the video ``v``."""
        if where.owner is not None:
            self.add(f"{row}.owner_id = {{}}", where.owner)
        if where.video_ids:
            self.add(f"{row}.video_id = ANY({{}}::uuid[])", list(where.video_ids))
        if where.min_duration_s > 0:
            self.add("c.end_s - c.start_s >= {}", where.min_duration_s)
        if where.max_duration_s > 0:
            self.add("c.end_s - c.start_s <= {}", where.max_duration_s)
        if where.created_after is not None:
            self.add("v.create_time >= {}", where.created_after)
        if where.created_before is not None:
            self.add("v.create_time < {}", where.created_before)
        if where.exclude is not None:
            self.add("c.id <> {}", where.exclude)
        return " AND ".join(self.sql)


# Keyframes: a clip has several, and is as close as its closest. A vector names its clip (``clip_id``; NULL on
# vectors from before keyframes, whose id is their clip's): the scan joins clips directly, as it filters on them,
# and keyframes only for each clip's best row (through keyframes, a selective filter took twice as long).
_VISUAL_SQL = """
WITH hits AS MATERIALIZED (
    SELECT c.id AS clip_id, x.video_id, c.start_s AS clip_start_s, x.id AS frame_id,
           x.embedding <=> $1 AS distance
      FROM visual_vectors x JOIN clips c ON c.id = coalesce(x.clip_id, x.id) JOIN videos v ON v.id = x.video_id
     WHERE x.model = $2 AND {where}
     ORDER BY {order} LIMIT $3),
best AS (SELECT DISTINCT ON (clip_id) * FROM hits ORDER BY clip_id, distance, frame_id)
SELECT b.clip_id, b.video_id, b.clip_start_s, k.start_s, k.end_s, k.thumbnail_key, 1 - b.distance AS score,
       (SELECT count(*) FROM hits) AS found
  FROM best b JOIN keyframes k ON k.id = b.frame_id ORDER BY b.distance, b.clip_id"""

_TRANSCRIPT_SQL = """
WITH hits AS MATERIALIZED (
    SELECT s.clip_id, x.video_id, c.start_s AS clip_start_s, s.id AS cue_id, s.text, s.start_s, s.end_s,
           x.embedding <=> $1 AS distance
      FROM transcript_vectors x JOIN transcript_segments s ON s.id = x.id
      JOIN clips c ON c.id = s.clip_id JOIN videos v ON v.id = x.video_id
     WHERE x.model = $2 AND {where}
     ORDER BY {order} LIMIT $3),
best AS (SELECT DISTINCT ON (clip_id) * FROM hits ORDER BY clip_id, distance, start_s)
SELECT clip_id, video_id, clip_start_s, cue_id, text, start_s, end_s, 1 - distance AS score,
       (SELECT count(*) FROM hits) AS found
  FROM best ORDER BY distance, clip_id"""

_LEXICAL_SQL = """
WITH units AS MATERIALIZED (
    SELECT q FROM (SELECT websearch_to_tsquery($2::regconfig, u) AS q FROM unnest($1::text[]) AS u) parsed
     WHERE numnode(q) > 0),
weighted AS MATERIALIZED (
    SELECT u.q, d.df, ln(1 + {cap}.0 / greatest(1, d.df)) AS idf
      FROM units u CROSS JOIN LATERAL (
           SELECT count(*) AS df FROM (SELECT 1 FROM transcript_segments d WHERE d.tsv @@ u.q {owner_d}
                                        LIMIT {cap}) capped) d),
pool AS MATERIALIZED (
    SELECT s.id FROM weighted w JOIN transcript_segments s ON s.tsv @@ w.q
     WHERE w.df < {cap} {owner_s}
    UNION
    (SELECT s.id FROM transcript_segments s
      WHERE NOT EXISTS (SELECT 1 FROM weighted WHERE df < {cap})
        AND s.tsv @@ (SELECT websearch_to_tsquery($2::regconfig, string_agg(u, ' ')) FROM unnest($1::text[]) u)
        {owner_s}
      LIMIT {common_pool})),
hits AS (
    SELECT s.id, s.clip_id, s.video_id, c.start_s AS clip_start_s, s.text, s.start_s, s.end_s,
           (SELECT sum(w.idf) FROM weighted w WHERE s.tsv @@ w.q) AS score
      FROM pool p JOIN transcript_segments s ON s.id = p.id
      JOIN clips c ON c.id = s.clip_id JOIN videos v ON v.id = s.video_id
     WHERE {where}
       AND NOT EXISTS (SELECT 1 FROM unnest($4::text[]) e WHERE s.tsv @@ websearch_to_tsquery($2::regconfig, e))),
best AS (SELECT DISTINCT ON (clip_id) * FROM hits ORDER BY clip_id, score DESC, start_s)
SELECT clip_id, video_id, clip_start_s, id AS cue_id, text, start_s, end_s,
       power(score / (SELECT sum(idf) FROM weighted), 3)::float8 AS score
  FROM best ORDER BY score DESC, video_id, clip_start_s LIMIT $3"""


def _match(row: Any) -> Match:
    if "text" in row.keys():
        return Match(row["clip_id"], row["video_id"], float(row["clip_start_s"]), float(row["score"]),
                     row["text"], float(row["start_s"]), float(row["end_s"]), row["cue_id"])
    return Match(row["clip_id"], row["video_id"], float(row["clip_start_s"]), float(row["score"]),
                 start_s=float(row["start_s"]), end_s=float(row["end_s"]), thumbnail_key=row["thumbnail_key"])


class PgRetrieval:
    """``ports.Retrieval`` over the search schema (its pool must carry ``CONNECTION_SETTINGS``).

    ``path_counts`` counts how statements were answered (``ann``, ``exact_rerun``, ``exact``, ``lexical``): what a
    metric or a test reads. ``exact=True`` ranks every filtered row exactly, never through HNSW: the ground truth
    that tests and benchmarks measure recall against."""

    def __init__(self, pool: Database, *, text_config: str = "english", exact: bool = False) -> None:
        self._pool = pool
        self._exact = exact
        self._text_config = text_config
        self._sizes: dict[str, tuple[float, float]] = {}  # table -> (when read, planner's row estimate)
        self.path_counts: dict[str, int] = {}

    def _count(self, path: str) -> None:
        self.path_counts[path] = self.path_counts.get(path, 0) + 1

    async def _table_rows(self, table: str) -> float:
        """The planner's estimate of ``table``'s rows, read at most every ``TABLE_SIZE_TTL_S``."""
        now = time.monotonic()
        held = self._sizes.get(table)
        if held is None or now - held[0] > TABLE_SIZE_TTL_S:
            rows = await self._pool.fetchval("SELECT reltuples FROM pg_class WHERE oid = $1::text::regclass", table)
            held = self._sizes[table] = (now, float(rows or 0))
        return held[1]

    async def _nearest(self, sql: str, table: str, model: str, vector: np.ndarray, limit: int,
                       where: ClipFilter, row: str) -> list[Match]:
        args: list[Any] = [np.asarray(vector, dtype=np.float32), model, limit]
        conditions = _Conditions(args).of(where, row)
        distance = f"{row}.embedding <=> $1"
        if self._exact:
            self._count("exact")
            return [_match(r) for r in await self._pool.fetch(sql.format(where=conditions, order=f"({distance}) + 0"),
                                                              *args)]
        rows = await self._pool.fetch(sql.format(where=conditions, order=distance), *args)
        self._count("ann")
        found = rows[0]["found"] if rows else 0  # rows the scan gave before one-per-clip
        if found < limit and await self._table_rows(table) > MAX_SCAN_TUPLES:
            # Possibly cut short by an iterative scan's limit: rank the filtered rows exactly.
            rows = await self._pool.fetch(sql.format(where=conditions, order=f"({distance}) + 0"), *args)
            self._count("exact_rerun")
        return [_match(r) for r in rows]

    async def visual(self, model: str, vector: np.ndarray, limit: int, where: ClipFilter) -> list[Match]:
        # ``limit`` keyframes, then the best per clip: a clip is as close as its closest frame.
        return await self._nearest(_VISUAL_SQL, "visual_vectors", model, vector, limit, where, "x")

    async def transcript(self, model: str, vector: np.ndarray, limit: int, where: ClipFilter) -> list[Match]:
        # ``limit`` cues, then the best per clip: a clip with several matching cues counts once.
        found = await self._nearest(_TRANSCRIPT_SQL, "transcript_vectors", model, vector, limit, where, "x")
        return found[:limit]

    async def lexical(self, query: str, limit: int, where: ClipFilter) -> list[Match]:
        wanted, excluded = lexical_units(query)
        if not wanted:
            return []
        args: list[Any] = [wanted, self._text_config, limit, excluded]
        conditions = _Conditions(args).of(where, "s")
        owner_d = owner_s = ""
        if where.owner is not None:
            args.append(where.owner)
            owner_d, owner_s = f"AND d.owner_id = ${len(args)}", f"AND s.owner_id = ${len(args)}"
        sql = _LEXICAL_SQL.format(where=conditions, owner_d=owner_d, owner_s=owner_s, cap=DF_CAP,
                                  common_pool=COMMON_POOL)
        rows = await self._pool.fetch(sql, *args)
        self._count("lexical")
        return [_match(r) for r in rows]
