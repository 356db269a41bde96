"""Pure rules of the services: fusion, page tokens, resource names, filters, cue → scene assignment,
and the mapping of domain errors to google.rpc.Status."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from google.rpc import code_pb2, error_details_pb2

from services.common.errors import FieldViolation, InvalidArgument, NotFound
from services.common.grpc_errors import to_rpc_status
from services.common.ids import derived_id
from services.common.names import parse_name
from services.common.paging import (
    bound_to,
    decode_offset,
    decode_token,
    encode_offset,
    encode_token,
    page_size,
)
from services.media.subtitles import Cue
from services.pipeline.processor import assign_segments
from services.pipeline.records import Clip
from services.pipeline.servicer import parse_job_filter
from services.search.searcher import SearchQuery


def test_search_page_token_is_bound_to_its_query_and_caller() -> None:
    q, caller = SearchQuery(text="dogs", page_size=2), uuid.uuid4()
    token = encode_offset(4, bound_to(caller, q.fingerprint()))  # as Searcher.search binds its tokens
    assert decode_offset(token, bound_to(caller, q.fingerprint())) == 4
    for other in (bound_to(caller, SearchQuery(text="cats").fingerprint()), bound_to(uuid.uuid4(), q.fingerprint())):
        with pytest.raises(InvalidArgument) as err:
            decode_offset(token, other)
        assert err.value.field_violations[0].field == "page_token"
        assert err.value.reason == "PAGE_TOKEN_MISMATCH"
    with pytest.raises(InvalidArgument):
        decode_offset("!!garbage", bound_to(caller, q.fingerprint()))


def test_list_tokens_round_trip_and_reject_garbage() -> None:
    stamp, item = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), uuid.uuid4()
    assert decode_token(encode_token(stamp, item)) == (stamp, item)
    assert decode_token("") is None
    with pytest.raises(InvalidArgument):
        decode_token("bm90LWEtdG9rZW4")
    assert page_size(0) == 50 and page_size(5000) == 1000
    with pytest.raises(InvalidArgument):
        page_size(-1)


def test_resource_names() -> None:
    vid = uuid.uuid4()
    assert parse_name(f"videos/{vid}", "videos") == vid
    for bad, reason in [("", "REQUIRED_FIELD"), (f"clips/{vid}", "INVALID_NAME"), ("videos/x", "INVALID_NAME")]:
        with pytest.raises(InvalidArgument) as err:
            parse_name(bad, "videos", field="video.name")
        assert err.value.reason == reason
        assert err.value.field_violations == [err.value.field_violations[0]]
        assert err.value.field_violations[0].field == "video.name"


def test_job_filter() -> None:
    vid = uuid.uuid4()
    assert parse_job_filter("") == (None, None)
    assert parse_job_filter(f'video = "videos/{vid}" AND state = RUNNING') == (vid, "RUNNING")
    for bad in ("state = SLEEPING", "owner = me", 'video = "jobs/1"'):
        with pytest.raises(InvalidArgument):
            parse_job_filter(bad)


def test_cues_go_to_the_scene_holding_their_midpoint() -> None:
    vid = uuid.uuid4()
    clips = [Clip(derived_id(vid, "clip", i), vid, i, s, e) for i, (s, e) in enumerate([(0, 10), (10, 20)])]
    cues = [Cue(1, 3, "a"), Cue(7, 12, "b"), Cue(9, 14, "c"), Cue(19, 25, "d")]
    segments = assign_segments(vid, cues, clips, "SIDECAR")
    assert [s.clip_id == clips[1].id for s in segments] == [False, False, True, True]
    assert segments[0].id == derived_id(vid, "segment", 0)  # stable across re-runs
    assert derived_id(vid, "clip", 0) != derived_id(vid, "segment", 0)


def test_domain_errors_become_rich_statuses() -> None:
    err = InvalidArgument("video: empty file", reason="EMPTY_FILE",
                          field_violations=[FieldViolation("video", "empty file")])
    status = to_rpc_status(err)
    assert status.code == code_pb2.INVALID_ARGUMENT and status.message == "video: empty file"
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert status.details[0].Unpack(info) and info.reason == "EMPTY_FILE" and info.domain == "clipmind.dev"
    assert status.details[1].Unpack(bad) and bad.field_violations[0].field == "video"
    assert to_rpc_status(NotFound("gone", reason="VIDEO_NOT_FOUND")).code == code_pb2.NOT_FOUND
