"""Usage on real PostgreSQL (issue 12, GetUsage): the facts ingest and the pipeline commit arrive over
``AnalyticsInternalService.RecordUsage`` (as their outboxes deliver them: possibly twice), and GetUsage counts them
exactly over any window — whole days from the daily rollup, partial days from the raw events — in all and per day,
ISO week or month, with searches from the search log and what is stored at the end of each period. Each test works
in an era of its own (the database is the session's), so everyone's figures over that era are its own events."""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from clipmind.analytics.internal.v1 import analytics_internal_service_pb2 as internal_pb
from clipmind.analytics.v1 import analytics_service_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp

from services.analytics.interactions import InteractionStore
from services.analytics.internal_servicer import AnalyticsInternalServicer
from services.analytics.reports import Reports
from services.analytics.search_log import SearchLogStore
from services.analytics.servicer import AnalyticsServicer
from services.analytics.usage import UsageStore
from services.common.db import Database
from services.common.errors import InvalidArgument, NotFound, PermissionDenied
from services.common.principal import Principal
from tests.db_setup import ServicerStub, service_db

pytestmark = pytest.mark.integration

Kind = internal_pb.UsageEvent
DAY, WEEK, MONTH = pb.USAGE_PERIOD_LENGTH_DAY, pb.USAGE_PERIOD_LENGTH_WEEK, pb.USAGE_PERIOD_LENGTH_MONTH


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[Database]:
    pool = await service_db(pg_dsn, "analytics")
    try:
        yield pool
    finally:
        await pool.close()


class Analytics:
    def __init__(self, db: Database) -> None:
        usage = UsageStore(db)
        self.internal = ServicerStub(AnalyticsInternalServicer(SearchLogStore(db), usage))
        self._servicer = AnalyticsServicer(InteractionStore(db), Reports(db), usage)

    def as_(self, caller: Principal) -> ServicerStub:
        return ServicerStub(self._servicer, principal=caller)


def _stamp(at: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


def _era() -> datetime:
    """A stretch of time no other test writes in: a random day of the 1990s, at an odd minute."""
    return datetime(1990, 1, 1, 13, 37, tzinfo=UTC) + timedelta(days=random.randrange(3650))


@dataclass(frozen=True)
class Event:
    user: Principal
    kind: internal_pb.UsageEvent.Kind.ValueType
    at: datetime
    size: int = 0
    seconds: float = 0.0
    id: str = ""

    def message(self) -> internal_pb.UsageEvent:
        return internal_pb.UsageEvent(event_id=self.id or str(uuid.uuid4()), user=self.user.name, kind=self.kind,
                                      event_time=_stamp(self.at), video=f"videos/{uuid.uuid4()}", bytes=self.size,
                                      seconds=self.seconds)


async def _log_search(analytics: Analytics, who: Principal, at: datetime) -> None:
    logged = internal_pb.LoggedSearch(search_id=str(uuid.uuid4()), query="q", result_count=0, latency_ms=5,
                                      user=who.name, search_time=_stamp(at))
    await analytics.internal.LogSearches(internal_pb.LogSearchesRequest(searches=[logged]))


def _expected(events: list[Event], searches: list[tuple[Principal, datetime]], who: Principal | None,
              start: datetime, end: datetime) -> dict[str, float]:
    """The figures of ``[start, end)`` counted from the raw facts (``who`` None: everyone's)."""
    mine = [e for e in events if who is None or e.user == who]
    inside = [e for e in mine if start <= e.at < end]
    before = [e for e in mine if e.at < end]

    def of(kind: internal_pb.UsageEvent.Kind.ValueType, pool: list[Event]) -> list[Event]:
        return [e for e in pool if e.kind == kind]

    return {
        "search_count": sum(1 for u, at in searches if (who is None or u == who) and start <= at < end),
        "upload_count": len(of(Kind.KIND_VIDEO_UPLOADED, inside)),
        "uploaded_bytes": sum(e.size for e in of(Kind.KIND_VIDEO_UPLOADED, inside)),
        "deleted_video_count": len(of(Kind.KIND_VIDEO_DELETED, inside)),
        "deleted_bytes": sum(e.size for e in of(Kind.KIND_VIDEO_DELETED, inside)),
        "processed_video_count": len(of(Kind.KIND_VIDEO_PROCESSED, inside)),
        "processed_video_seconds": sum(e.seconds for e in of(Kind.KIND_VIDEO_PROCESSED, inside)),
        "processing_seconds": sum(e.seconds for e in of(Kind.KIND_PROCESSING_RUN, inside)),
        "compilation_count": len(of(Kind.KIND_COMPILATION_RENDERED, inside)),
        "stored_video_count": len(of(Kind.KIND_VIDEO_UPLOADED, before)) - len(of(Kind.KIND_VIDEO_DELETED, before)),
        "stored_bytes": sum(e.size for e in of(Kind.KIND_VIDEO_UPLOADED, before))
        - sum(e.size for e in of(Kind.KIND_VIDEO_DELETED, before)),
    }


def _figures(got: pb.Usage | pb.UsagePeriod) -> dict[str, float]:
    return {name: getattr(got, name) for name in (
        "search_count", "upload_count", "uploaded_bytes", "deleted_video_count", "deleted_bytes",
        "processed_video_count", "processed_video_seconds", "processing_seconds", "compilation_count",
        "stored_video_count", "stored_bytes")}


def _assert_figures(got: dict[str, float], want: dict[str, float], where: str) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-6), f"{where}: {name}"


def _unit(at: datetime, period: int) -> tuple[int, ...]:
    """The calendar day, ISO week or month of ``at`` (UTC), computed independently of the code under test."""
    at = at.astimezone(UTC)
    if period == DAY:
        return (at.year, at.month, at.day)
    if period == WEEK:
        return tuple(at.isocalendar()[:2])
    return (at.year, at.month)


async def test_usage_counts_exactly_over_random_windows_in_all_and_per_period(db: Database) -> None:
    analytics, alice, bob = Analytics(db), Principal(uuid.uuid4(), "user"), Principal(uuid.uuid4(), "user")
    admin = Principal(uuid.uuid4(), "admin")
    rng = random.Random(7)
    era = _era()
    span_s = 75 * 86400  # two and a half months of facts
    events: list[Event] = []
    for _ in range(160):
        actor = rng.choice((alice, bob))
        at = era + timedelta(seconds=rng.randrange(span_s))
        kind = rng.choice((Kind.KIND_VIDEO_UPLOADED, Kind.KIND_VIDEO_UPLOADED, Kind.KIND_VIDEO_DELETED,
                           Kind.KIND_VIDEO_PROCESSED, Kind.KIND_PROCESSING_RUN, Kind.KIND_COMPILATION_RENDERED))
        events.append(Event(actor, kind, at, size=rng.randrange(1, 10**9), seconds=round(rng.uniform(0, 300), 3)))
    searches = [(rng.choice((alice, bob)), era + timedelta(seconds=rng.randrange(span_s))) for _ in range(60)]
    for i in range(0, len(events), 50):  # in batches, as an outbox relay might deliver them
        got = await analytics.internal.RecordUsage(internal_pb.RecordUsageRequest(
            events=[e.message() for e in events[i:i + 50]]))
        assert got.recorded_count == len(events[i:i + 50])
    for searcher, at in searches:
        await _log_search(analytics, searcher, at)

    windows = [(era, era + timedelta(seconds=span_s))]  # and random ones, cut inside days
    for _ in range(6):
        a, b = sorted(rng.sample(range(-86400, span_s + 86400), 2))
        windows.append((era + timedelta(seconds=a), era + timedelta(seconds=b)))
    for start, end in windows:
        callers: list[tuple[Principal, Principal | None]] = [(alice, alice), (bob, bob), (admin, None), (admin, alice)]
        for caller, who in callers:
            name = f"{who.name}/usage" if who is not None else "users/-/usage"
            where = f"{name} [{start}, {end})"
            got = await analytics.as_(caller).GetUsage(pb.GetUsageRequest(
                name=name, start_time=_stamp(start), end_time=_stamp(end)))
            assert got.name == name and not got.periods
            assert (got.start_time.ToDatetime(tzinfo=UTC), got.end_time.ToDatetime(tzinfo=UTC)) == (start, end)
            _assert_figures(_figures(got), _expected(events, searches, who, start, end), where)
        for period in (DAY, WEEK, MONTH):
            got = await analytics.as_(alice).GetUsage(pb.GetUsageRequest(
                name="users/me/usage", start_time=_stamp(start), end_time=_stamp(end), period=period))
            assert got.name == f"{alice.name}/usage"
            bounds = [(p.start_time.ToDatetime(tzinfo=UTC), p.end_time.ToDatetime(tzinfo=UTC)) for p in got.periods]
            assert bounds[0][0] == start and bounds[-1][1] == end  # the periods tile the window
            assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
            for (lo, hi), part in zip(bounds, got.periods, strict=True):
                assert lo < hi and _unit(lo, period) == _unit(hi - timedelta(microseconds=1), period)
                if lo != start:  # a period starts at its unit's first instant
                    assert _unit(lo - timedelta(microseconds=1), period) != _unit(lo, period)
                _assert_figures(_figures(part), _expected(events, searches, alice, lo, hi), f"{where} {lo}")
            totals = _figures(got)
            for name in ("upload_count", "search_count", "processing_seconds"):
                assert totals[name] == pytest.approx(sum(getattr(p, name) for p in got.periods))


async def test_a_fact_delivered_twice_is_counted_once(db: Database) -> None:
    analytics, alice = Analytics(db), Principal(uuid.uuid4(), "user")
    era = _era()
    upload = Event(alice, Kind.KIND_VIDEO_UPLOADED, era + timedelta(hours=1), size=1000, id=str(uuid.uuid4()))
    first = await analytics.internal.RecordUsage(internal_pb.RecordUsageRequest(events=[upload.message()]))
    again = await analytics.internal.RecordUsage(internal_pb.RecordUsageRequest(events=[upload.message()] * 2))
    assert (first.recorded_count, again.recorded_count) == (1, 0)
    got = await analytics.as_(alice).GetUsage(pb.GetUsageRequest(
        name="users/me/usage", start_time=_stamp(era), end_time=_stamp(era + timedelta(days=3))))
    assert (got.upload_count, got.uploaded_bytes, got.stored_bytes) == (1, 1000, 1000)


async def test_without_a_start_the_window_opens_at_the_first_record(db: Database) -> None:
    analytics, alice = Analytics(db), Principal(uuid.uuid4(), "user")
    era = _era()
    await _log_search(analytics, alice, era)
    await analytics.internal.RecordUsage(internal_pb.RecordUsageRequest(events=[
        Event(alice, Kind.KIND_VIDEO_UPLOADED, era + timedelta(days=2), size=5).message()]))
    got = await analytics.as_(alice).GetUsage(pb.GetUsageRequest(name="users/me/usage", period=MONTH))
    assert got.start_time.ToDatetime(tzinfo=UTC) == era
    assert (got.search_count, got.upload_count, got.stored_bytes) == (1, 1, 5)
    assert got.periods[0].start_time.ToDatetime(tzinfo=UTC) == era and got.periods[0].search_count == 1
    nobody = Principal(uuid.uuid4(), "user")  # no records at all: an empty window, no periods
    empty = await analytics.as_(nobody).GetUsage(pb.GetUsageRequest(name="users/me/usage", period=DAY))
    assert (empty.search_count, empty.upload_count, len(empty.periods)) == (0, 0, 0)


async def test_usage_is_the_owners_and_bad_requests_name_the_field(db: Database) -> None:
    analytics, alice, bob = Analytics(db), Principal(uuid.uuid4(), "user"), Principal(uuid.uuid4(), "user")
    as_alice = analytics.as_(alice)
    with pytest.raises(NotFound):  # another user's usage: as if that user did not exist
        await as_alice.GetUsage(pb.GetUsageRequest(name=f"{bob.name}/usage"))
    with pytest.raises(PermissionDenied):
        await as_alice.GetUsage(pb.GetUsageRequest(name="users/-/usage"))
    era = _era()
    midnight = era.replace(hour=0, minute=0)
    cases = {
        "name": pb.GetUsageRequest(name="users/me"),
        "end_time": pb.GetUsageRequest(name="users/me/usage", start_time=_stamp(era), end_time=_stamp(era)),
        "period": pb.GetUsageRequest(name="users/me/usage", start_time=_stamp(midnight),
                                     end_time=_stamp(midnight + timedelta(days=1000, seconds=1)), period=DAY),
    }
    for field, request in cases.items():
        with pytest.raises(InvalidArgument) as refused:
            await as_alice.GetUsage(request)
        assert [v.field for v in refused.value.field_violations] == [field]
    ok = await as_alice.GetUsage(pb.GetUsageRequest(name="users/me/usage", start_time=_stamp(midnight),
                                                    end_time=_stamp(midnight + timedelta(days=1000)), period=DAY))
    assert len(ok.periods) == 1000

    good = Event(alice, Kind.KIND_VIDEO_UPLOADED, era, size=1).message()
    bad_events = {
        "events[1].event_id": internal_pb.UsageEvent(event_id="nope"),
        "events[1].kind": internal_pb.UsageEvent(event_id=str(uuid.uuid4()), user=alice.name),
        "events[1].event_time": internal_pb.UsageEvent(event_id=str(uuid.uuid4()), user=alice.name,
                                                       kind=Kind.KIND_PROCESSING_RUN),
        "events[1].seconds": internal_pb.UsageEvent(event_id=str(uuid.uuid4()), user=alice.name, seconds=-1,
                                                    kind=Kind.KIND_PROCESSING_RUN, event_time=_stamp(era)),
        "events[1].user": internal_pb.UsageEvent(event_id=str(uuid.uuid4()), user="alice",
                                                 kind=Kind.KIND_PROCESSING_RUN, event_time=_stamp(era)),
    }
    for field, event in bad_events.items():
        with pytest.raises(InvalidArgument) as refused:
            await analytics.internal.RecordUsage(internal_pb.RecordUsageRequest(events=[good, event]))
        assert [v.field for v in refused.value.field_violations] == [field]
    nothing = await as_alice.GetUsage(pb.GetUsageRequest(name="users/me/usage", start_time=_stamp(era),
                                                         end_time=_stamp(era + timedelta(days=1))))
    assert nothing.upload_count == 0  # a refused batch records none of its events
