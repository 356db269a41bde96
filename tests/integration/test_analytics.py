"""Search analytics on real PostgreSQL (issue 12): searches arrive in the log as the search service's outbox
delivers them (``AnalyticsInternalService.LogSearches``), people record impressions, clicks and plays against
them (``RecordInteraction``), and the reports count exactly — per user for users, everyone's or one user's for
administrators. The servicers are called in process with a caller bound, as the authentication interceptor
binds it. The database is the session's: each test uses its own users and a time window of its own."""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from clipmind.analytics.internal.v1 import analytics_internal_service_pb2 as internal_pb
from clipmind.analytics.v1 import analytics_service_pb2 as pb

from services.analytics.interactions import InteractionStore
from services.analytics.internal_servicer import AnalyticsInternalServicer
from services.analytics.reports import Reports
from services.analytics.search_log import SearchLogStore
from services.analytics.servicer import AnalyticsServicer
from services.analytics.usage import UsageStore
from services.common.db import Database
from services.common.errors import InvalidArgument, NotFound
from services.common.principal import Principal
from services.common.query_text import normalized_query
from tests.db_setup import ServicerStub, service_db

pytestmark = pytest.mark.integration

CLICK, IMPRESSION, PLAY = pb.Interaction.TYPE_CLICK, pb.Interaction.TYPE_IMPRESSION, pb.Interaction.TYPE_PLAY


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[Database]:
    pool = await service_db(pg_dsn, "analytics")
    try:
        yield pool
    finally:
        await pool.close()


class Analytics:
    """The analytics service in process: its log (as the search service's outbox calls it) and its public API
    as any caller."""

    def __init__(self, db: Database, *, search_wait_s: float = 2.0) -> None:
        usage = UsageStore(db)
        self.log = ServicerStub(AnalyticsInternalServicer(SearchLogStore(db), usage))
        self._servicer = AnalyticsServicer(InteractionStore(db, search_wait_s=search_wait_s), Reports(db), usage)

    def as_(self, caller: Principal) -> ServicerStub:
        return ServicerStub(self._servicer, principal=caller)


def _user() -> Principal:
    return Principal(uuid.uuid4(), "user")


async def _search(analytics: Analytics, who: Principal, query: str, clips: list[uuid.UUID], at: datetime, *,
                  latency_ms: float = 10.0, fusion: str = "weighted") -> str:
    """Log one search of ``who``'s that ranked ``clips`` (1, 2, ...) as the search service does; its id."""
    search_id = str(uuid.uuid4())
    logged = internal_pb.LoggedSearch(search_id=search_id, query=query, result_count=len(clips),
                                      latency_ms=latency_ms, user=who.name, fusion=fusion)
    logged.search_time.FromDatetime(at)
    for rank, clip in enumerate(clips, 1):
        logged.results.add(clip=f"clips/{clip}", video=f"videos/{uuid.uuid4()}", rank=rank, score=1.0 / rank)
    await analytics.log.LogSearches(internal_pb.LogSearchesRequest(searches=[logged]))
    return search_id


def _interaction(search_id: str, clip: uuid.UUID, kind: int, **fields: object) -> pb.Interaction:
    return pb.Interaction(search_id=search_id, clip=f"clips/{clip}", type=kind, **fields)  # type: ignore[arg-type]


def _window(start: datetime, days: int = 1, end: datetime | None = None) -> dict[str, object]:
    request: dict[str, object] = {}
    for name, at in (("start_time", start), ("end_time", end or start + timedelta(days=days))):
        stamp = pb.GetSearchStatsRequest().start_time.__class__()
        stamp.FromDatetime(at)
        request[name] = stamp
    return request


async def test_stats_count_exactly_and_each_user_sees_their_own(db: Database) -> None:
    analytics, alice, bob = Analytics(db), _user(), _user()
    admin = Principal(uuid.uuid4(), "admin")
    day = datetime(2031, 1, 1, tzinfo=UTC) + timedelta(days=uuid.uuid4().int % 10_000)  # this test's own day
    clips = [uuid.uuid4() for _ in range(5)]
    a1 = await _search(analytics, alice, "Dog jumping", clips, day + timedelta(hours=1), latency_ms=10)
    a2 = await _search(analytics, alice, "dog  jumping ", clips[:3], day + timedelta(hours=2), latency_ms=20)
    await _search(analytics, alice, "unicorn parade", [], day + timedelta(hours=3), latency_ms=30)
    b1 = await _search(analytics, bob, "quarterly revenue", clips[2:], day + timedelta(hours=4), latency_ms=40)
    await _search(analytics, alice, "before the window", clips, day - timedelta(minutes=1))

    as_alice, as_bob = analytics.as_(alice), analytics.as_(bob)
    for clip in clips:  # every result of a1 shown, the 3rd and then the 1st clicked; a2's first shown too
        await as_alice.RecordInteraction(pb.RecordInteractionRequest(interaction=_interaction(a1, clip, IMPRESSION)))
    await as_alice.RecordInteraction(pb.RecordInteractionRequest(interaction=_interaction(a2, clips[0], IMPRESSION)))
    await as_alice.RecordInteraction(pb.RecordInteractionRequest(interaction=_interaction(a1, clips[2], CLICK)))
    await as_alice.RecordInteraction(pb.RecordInteractionRequest(interaction=_interaction(a1, clips[0], CLICK)))
    played = await as_alice.RecordInteraction(pb.RecordInteractionRequest(
        interaction=_interaction(a1, clips[0], PLAY, watched_seconds=12.5)))
    assert (played.rank, played.user, played.watched_seconds) == (1, alice.name, 12.5)  # the search's rank
    await as_bob.RecordInteraction(pb.RecordInteractionRequest(
        interaction=_interaction(b1, clips[3], CLICK, rank=2)))  # bob's results start at clips[2]

    window = _window(day)
    mine = await as_alice.GetSearchStats(pb.GetSearchStatsRequest(**window))  # type: ignore[arg-type]
    assert (mine.search_count, mine.unique_user_count, mine.clicked_search_count) == (3, 1, 1)
    assert mine.click_through_rate == pytest.approx(1 / 3)
    assert mine.zero_result_rate == pytest.approx(1 / 3)
    assert mine.mean_reciprocal_rank == pytest.approx((1 / 3) / 3)  # a1's first click was at rank 3
    assert mine.latency_p50.ToNanoseconds() / 1e6 == pytest.approx(20, rel=0.073)  # from a 15 % histogram
    everyone = await analytics.as_(admin).GetSearchStats(pb.GetSearchStatsRequest(**window))  # type: ignore[arg-type]
    assert (everyone.search_count, everyone.unique_user_count, everyone.clicked_search_count) == (4, 2, 2)
    assert everyone.mean_reciprocal_rank == pytest.approx((1 / 3 + 1 / 2) / 4)
    only_bob = await analytics.as_(admin).GetSearchStats(
        pb.GetSearchStatsRequest(user=bob.name, **window))  # type: ignore[arg-type]
    assert (only_bob.search_count, only_bob.click_through_rate) == (1, 1.0)
    with pytest.raises(NotFound):  # another user's figures: as if that user did not exist
        await as_alice.GetSearchStats(pb.GetSearchStatsRequest(user=bob.name, **window))  # type: ignore[arg-type]

    # Popular queries group normalized forms; alice never sees bob's query, an administrator sees both.
    popular = await as_alice.ListPopularQueries(pb.ListPopularQueriesRequest(**window))  # type: ignore[arg-type]
    assert [(q.query, q.search_count, q.click_count) for q in popular.popular_queries] == [
        ("dog jumping", 2, 2), ("unicorn parade", 1, 0)]
    assert popular.popular_queries[0].click_through_rate == 0.5
    assert popular.popular_queries[1].zero_result_rate == 1.0
    everyone_q = await analytics.as_(admin).ListPopularQueries(
        pb.ListPopularQueriesRequest(page_size=2, **window))  # type: ignore[arg-type]
    assert [q.query for q in everyone_q.popular_queries] == ["dog jumping", "quarterly revenue"]
    rest = await analytics.as_(admin).ListPopularQueries(
        pb.ListPopularQueriesRequest(page_size=2, page_token=everyone_q.next_page_token, **window))  # type: ignore[arg-type]
    assert [q.query for q in rest.popular_queries] == ["unicorn parade"] and not rest.next_page_token

    clips_report = await as_alice.ListPopularClips(pb.ListPopularClipsRequest(page_size=2))
    assert [(c.clip, c.click_count, c.impression_count, c.play_count, c.watched_seconds)
            for c in clips_report.popular_clips] == [
        (f"clips/{clips[0]}", 1, 2, 1, 12.5), (f"clips/{clips[2]}", 1, 1, 0, 0.0)]


async def test_bad_interactions_are_refused_and_a_repeated_request_records_once(db: Database) -> None:
    analytics, alice, bob = Analytics(db, search_wait_s=0.3), _user(), _user()
    clips = [uuid.uuid4() for _ in range(3)]
    at = datetime.now(UTC)
    search = await _search(analytics, alice, "harbour at night", clips, at)
    as_alice = analytics.as_(alice)

    def record(interaction: pb.Interaction, request_id: str = "") -> object:
        return as_alice.RecordInteraction(pb.RecordInteractionRequest(interaction=interaction, request_id=request_id))

    with pytest.raises(InvalidArgument) as refused:  # a clip the search did not rank
        await record(_interaction(search, uuid.uuid4(), CLICK))
    assert refused.value.field_violations[0].field == "interaction.clip"
    with pytest.raises(InvalidArgument) as refused:  # a rank the search did not give it
        await record(_interaction(search, clips[1], CLICK, rank=1))
    assert refused.value.field_violations[0].field == "interaction.rank"
    for bad, field in ((_interaction(search, clips[0], 0), "interaction.type"),
                       (_interaction("", clips[0], CLICK), "interaction.search_id"),
                       (_interaction("not-a-uuid", clips[0], CLICK), "interaction.search_id"),
                       (_interaction(search, clips[0], CLICK, watched_seconds=3.0), "interaction.watched_seconds")):
        with pytest.raises(InvalidArgument) as refused:
            await record(bad)
        assert refused.value.field_violations[0].field == field
    with pytest.raises(NotFound):  # bob's view of alice's search: as if it did not exist
        await analytics.as_(bob).RecordInteraction(
            pb.RecordInteractionRequest(interaction=_interaction(search, clips[0], CLICK)))

    first = await record(_interaction(search, clips[1], CLICK), request_id="click-1")
    again = await record(_interaction(search, clips[1], CLICK), request_id="click-1")
    assert again == first
    row = await db.fetchrow("SELECT click_count, first_click_rank FROM searches WHERE id = $1", uuid.UUID(search))
    assert tuple(row or ()) == (1, 2)  # counted once, nothing of the refused ones
    assert await db.fetchval("SELECT count(*) FROM interactions WHERE search_id = $1", uuid.UUID(search)) == 1


async def test_an_interaction_may_arrive_just_before_its_search_is_logged(db: Database) -> None:
    """The search log comes through the search service's outbox: an impression sent at once waits for it."""
    analytics, alice = Analytics(db, search_wait_s=3.0), _user()
    clip, search_id = uuid.uuid4(), str(uuid.uuid4())
    early = asyncio.create_task(analytics.as_(alice).RecordInteraction(
        pb.RecordInteractionRequest(interaction=_interaction(search_id, clip, IMPRESSION))))
    await asyncio.sleep(0.5)
    logged = internal_pb.LoggedSearch(search_id=search_id, query="late log", result_count=1, latency_ms=5,
                                      user=alice.name)
    logged.search_time.GetCurrentTime()
    logged.results.add(clip=f"clips/{clip}", video=f"videos/{uuid.uuid4()}", rank=1, score=0.9)
    await analytics.log.LogSearches(internal_pb.LogSearchesRequest(searches=[logged]))
    assert (await early).rank == 1


async def test_stats_over_any_window_match_the_raw_log(db: Database) -> None:
    """Reports read whole hours (days) from the rollups and a window's partial hours (days) from the raw rows:
    over random windows, searches at random times with random interactions count exactly as the raw log does —
    search figures, popular queries, popular clips — for one user and for everyone (these users only: a window of
    its own), and percentiles are within the histogram's 7.3 %."""
    rng = random.Random(4)
    analytics, admin = Analytics(db), Principal(uuid.uuid4(), "admin")
    interacted: list[tuple[Principal, uuid.UUID, int]] = []
    users = [_user() for _ in range(3)]
    base = datetime(2032, 1, 1, tzinfo=UTC) + timedelta(days=uuid.uuid4().int % 10_000)
    logged, shared = [], [uuid.uuid4() for _ in range(4)]  # results the searches share: clips seen more than once
    for _ in range(80):
        who, at = rng.choice(users), base + timedelta(minutes=rng.uniform(0, 3 * 24 * 60))
        clips = rng.sample(shared, rng.choice([0, 3, 4]))
        latency = rng.uniform(3, 300)
        text = rng.choice(["Dog jumping", "dog  jumping", "harbour at night", "Harbour at NIGHT ", "storm"])
        search = await _search(analytics, who, text, clips, at, latency_ms=latency)
        first, clicks = None, 0
        for _ in range(rng.choice([0, 0, 1, 2])) if clips else []:
            rank = rng.randint(1, len(clips))
            kind = rng.choice([CLICK, CLICK, IMPRESSION, PLAY])
            await analytics.as_(who).RecordInteraction(pb.RecordInteractionRequest(interaction=_interaction(
                search, clips[rank - 1], kind, watched_seconds=2.0 if kind == PLAY else 0.0)))
            interacted.append((who, clips[rank - 1], kind))
            if kind == CLICK:
                first, clicks = first or rank, clicks + 1
        logged.append((who, at, len(clips), latency, first, normalized_query(text), clicks))
    for _ in range(8):
        start = base + timedelta(minutes=rng.uniform(-60, 3 * 24 * 60))
        end = start + timedelta(minutes=rng.uniform(10, 2 * 24 * 60))
        for caller, scope in ((admin, None), (users[0], users[0])):
            inside = [s for s in logged if start <= s[1] < end and (scope is None or s[0] == scope)]
            stats = await analytics.as_(caller).GetSearchStats(
                pb.GetSearchStatsRequest(**_window(start, end=end)))  # type: ignore[arg-type]
            assert stats.search_count == len(inside)
            assert stats.unique_user_count == len({s[0] for s in inside})
            assert stats.clicked_search_count == sum(1 for s in inside if s[4])
            assert stats.zero_result_rate == pytest.approx(sum(1 for s in inside if not s[2]) / len(inside)
                                                           if inside else 0)
            assert stats.mean_reciprocal_rank == pytest.approx(sum(1 / s[4] for s in inside if s[4]) / len(inside)
                                                               if inside else 0)
            if inside:
                exact = sorted(s[3] for s in inside)[max(0, math.ceil(0.5 * len(inside)) - 1)]
                assert stats.latency_p50.ToNanoseconds() / 1e6 == pytest.approx(exact, rel=0.073)
            by_query: dict[str, list[int]] = {}
            for s in inside:
                row = by_query.setdefault(s[5], [0, 0, 0, 0])
                row[0], row[1], row[2], row[3] = row[0] + 1, row[1] + s[6], row[2] + (s[6] > 0), row[3] + (not s[2])
            popular = await analytics.as_(caller).ListPopularQueries(
                pb.ListPopularQueriesRequest(page_size=50, **_window(start, end=end)))  # type: ignore[arg-type]
            assert {q.query: [q.search_count, q.click_count, round(q.click_through_rate * q.search_count),
                              round(q.zero_result_rate * q.search_count)] for q in popular.popular_queries} == by_query
            counts = [q.search_count for q in popular.popular_queries]
            assert counts == sorted(counts, reverse=True)

    # Interactions are counted on their own day (now): a window holding today whole reads the daily rollup, one
    # of two hours around now the raw rows; both count what was recorded.
    now = datetime.now(UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    for start, end in ((today - timedelta(days=1), today + timedelta(days=1)),
                       (now - timedelta(hours=1), now + timedelta(hours=1))):
        for caller, scope in ((admin, None), (users[1], users[1])):
            expected: dict[str, list[float]] = {}
            for who, clip, kind in interacted:
                if scope is None or who == scope:
                    row = expected.setdefault(f"clips/{clip}", [0, 0, 0, 0.0])
                    row[0] += kind == CLICK
                    row[1] += kind == IMPRESSION
                    row[2] += kind == PLAY
                    row[3] += 2.0 if kind == PLAY else 0.0
            window = _window(start, end=end)
            report = await analytics.as_(caller).ListPopularClips(
                pb.ListPopularClipsRequest(page_size=50, **window))  # type: ignore[arg-type]
            got = {c.clip: [c.click_count, c.impression_count, c.play_count, c.watched_seconds]
                   for c in report.popular_clips if scope is not None or c.clip in expected}
            assert got == expected
