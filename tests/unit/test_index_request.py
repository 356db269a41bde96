"""The index a worker sends (pipeline.search_index) is the index search reads (search.internal_servicer)."""

from __future__ import annotations

import uuid
from dataclasses import astuple

import numpy as np
import pytest

from services.common.errors import InvalidArgument
from services.common.ids import derived_id
from services.pipeline.records import Clip, ProcessedVideo, Segment
from services.pipeline.search_index import index_request
from services.search.internal_servicer import index_from_pb


def _processed(video_id: uuid.UUID) -> ProcessedVideo:
    rng = np.random.default_rng(1)
    clips = [Clip(derived_id(video_id, "clip", i), video_id, i, i * 5.0, i * 5.0 + 5, f"k/{i}.jpg") for i in range(2)]
    segments = [Segment(derived_id(video_id, "segment", 0), video_id, clips[1].id, 0, 6.0, 7.5, "hello", "SIDECAR")]
    return ProcessedVideo(clips, segments, [(segments[0].id, rng.standard_normal(384).astype(np.float32))],
                          "SIDECAR", "sbert/x", [(clips[0].id, rng.standard_normal(512).astype(np.float32))],
                          "clip/x")


def test_the_index_round_trips() -> None:
    video_id = uuid.uuid4()
    sent = _processed(video_id)
    owner = uuid.uuid4()
    got_video, got_owner, got = index_from_pb(index_request(video_id, 7, sent, owner_id=owner))
    assert (got_video, got_owner) == (video_id, owner)
    assert [(c.id, c.idx, c.start_s, c.end_s, c.thumbnail_key) for c in got.clips] == [
        (c.id, c.idx, c.start_s, c.end_s, c.thumbnail_key) for c in sent.clips]
    assert [astuple(g) for g in got.segments] == [astuple(g) for g in sent.segments]  # each side's records
    assert (got.transcript_model, got.visual_model) == ("sbert/x", "clip/x")
    assert [i for i, _ in got.visual_vectors] == [sent.clips[0].id]  # the clip without a vector has none
    np.testing.assert_allclose(got.vectors[0][1], sent.vectors[0][1])


def test_bad_indexes_are_refused_naming_the_field() -> None:
    video_id = uuid.uuid4()
    request = index_request(video_id, 1, _processed(video_id), owner_id=uuid.uuid4())
    del request.segments[0].embedding[-1]
    with pytest.raises(InvalidArgument) as err:
        index_from_pb(request)
    assert err.value.field_violations[0].field == "segments[0].embedding"
    request = index_request(video_id, 1, _processed(video_id), owner_id=uuid.uuid4())
    request.segments[0].clip_id = str(uuid.uuid4())
    with pytest.raises(InvalidArgument) as err:
        index_from_pb(request)
    assert err.value.field_violations[0].field == "segments[0].clip_id"
    request = index_request(video_id, 1, _processed(video_id), owner_id=uuid.uuid4())
    request.visual_model = ""
    with pytest.raises(InvalidArgument) as err:
        index_from_pb(request)
    assert err.value.field_violations[0].field == "visual_model"


def test_an_index_without_a_valid_owner_is_refused() -> None:
    video_id = uuid.uuid4()
    for owner, reason in (("", "REQUIRED_FIELD"), ("users/not-a-uuid", "INVALID_NAME"),
                          (f"videos/{uuid.uuid4()}", "INVALID_NAME")):
        request = index_request(video_id, 1, _processed(video_id), owner_id=uuid.uuid4())
        request.owner = owner
        with pytest.raises(InvalidArgument) as err:
            index_from_pb(request)
        assert (err.value.reason, err.value.field_violations[0].field) == (reason, "owner")


def test_repeated_ids_and_indexes_are_refused_naming_the_field() -> None:
    video_id = uuid.uuid4()
    for mutate, field in (
        (lambda r: setattr(r.clips[1], "id", r.clips[0].id), "clips[1].id"),
        (lambda r: setattr(r.clips[1], "index", r.clips[0].index), "clips[1].index"),
        (lambda r: r.segments.append(r.segments[0]), "segments[1].id"),
    ):
        request = index_request(video_id, 1, _processed(video_id), owner_id=uuid.uuid4())
        mutate(request)
        with pytest.raises(InvalidArgument) as err:
            index_from_pb(request)
        assert err.value.field_violations[0].field == field
