"""The index a worker sends (pipeline.search_index) is the index search reads (search.internal_servicer)."""

from __future__ import annotations

import uuid
from dataclasses import astuple

import numpy as np
import pytest

from services.common.errors import InvalidArgument
from services.common.ids import derived_id, keyframe_id
from services.pipeline.records import Clip, Keyframe, ProcessedVideo, Segment
from services.pipeline.search_index import index_request
from services.search.internal_servicer import index_from_pb


def _processed(video_id: uuid.UUID) -> ProcessedVideo:
    """Two 5 s scenes; the second has two keyframes (2.5 s each), the first one; only the first frame of each has
    a CLIP vector."""
    rng = np.random.default_rng(1)
    spans = [[(0.0, 5.0)], [(5.0, 7.5), (7.5, 10.0)]]
    clips = [Clip(derived_id(video_id, "clip", i), video_id, i, i * 5.0, i * 5.0 + 5, f"k/{i}-00.jpg",
                  [Keyframe(keyframe_id(video_id, i, n), n, (a + b) / 2, a, b, f"k/{i}-{n:02d}.jpg")
                   for n, (a, b) in enumerate(spans[i])]) for i in range(2)]
    segments = [Segment(derived_id(video_id, "segment", 0), video_id, clips[1].id, 0, 6.0, 7.5, "hello", "SIDECAR")]
    return ProcessedVideo(clips, segments, [(segments[0].id, rng.standard_normal(384).astype(np.float32))],
                          "SIDECAR", "sbert/x", [(c.keyframes[0].id, rng.standard_normal(512).astype(np.float32))
                                                 for c in clips], "clip/x")


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
    assert [(k.id, k.clip_id, k.idx, k.time_s, k.start_s, k.end_s, k.thumbnail_key) for k in got.keyframes] == [
        (k.id, c.id, k.idx, k.time_s, k.start_s, k.end_s, k.blob_key) for c in sent.clips for k in c.keyframes]
    assert [i for i, _ in got.visual_vectors] == [i for i, _ in sent.visual_vectors]  # a frame without one has none
    np.testing.assert_allclose(got.vectors[0][1], sent.vectors[0][1])
    np.testing.assert_allclose(got.visual_vectors[1][1], sent.visual_vectors[1][1])


def test_a_clip_without_keyframes_has_one_for_the_whole_scene() -> None:
    """As a pipeline from before several keyframes sends it: one vector per clip, stored as the clip's one
    keyframe under its id, standing for the whole scene."""
    video_id = uuid.uuid4()
    request = index_request(video_id, 1, _processed(video_id), owner_id=uuid.uuid4())
    vector = list(request.clips[1].keyframes[0].visual_embedding)
    del request.clips[1].keyframes[:]
    request.clips[1].visual_embedding.extend(vector)
    _, _, got = index_from_pb(request)
    clip = got.clips[1]
    assert [(k.id, k.clip_id, k.start_s, k.end_s, k.thumbnail_key) for k in got.keyframes if k.clip_id == clip.id] \
        == [(clip.id, clip.id, 5.0, 10.0, clip.thumbnail_key)]
    assert dict(got.visual_vectors)[clip.id].tolist() == pytest.approx(vector)


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
    for mutate, field in (  # a keyframe: a vector of the wrong size, a stretch outside its scene, or backwards
        (lambda r: r.clips[1].keyframes[0].visual_embedding.append(0.0), "clips[1].keyframes[0].visual_embedding"),
        (lambda r: setattr(r.clips[1].keyframes[1], "end_seconds", 11.0), "clips[1].keyframes[1].start_seconds"),
        (lambda r: setattr(r.clips[1].keyframes[0], "start_seconds", 4.0), "clips[1].keyframes[0].start_seconds"),
        (lambda r: setattr(r.clips[1].keyframes[0], "end_seconds", 5.0), "clips[1].keyframes[0].end_seconds"),
        (lambda r: setattr(r.clips[1].keyframes[0], "time_seconds", -1.0), "clips[1].keyframes[0].time_seconds"),
        (lambda r: r.clips[0].visual_embedding.extend([0.0] * 512), "clips[0].visual_embedding"),  # and keyframes
    ):
        request = index_request(video_id, 1, _processed(video_id), owner_id=uuid.uuid4())
        mutate(request)
        with pytest.raises(InvalidArgument) as err:
            index_from_pb(request)
        assert err.value.field_violations[0].field == field


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
        (lambda r: setattr(r.clips[1].keyframes[1], "id", r.clips[0].keyframes[0].id), "clips[1].keyframes[1].id"),
        (lambda r: setattr(r.clips[1].keyframes[1], "index", 0), "clips[1].keyframes[1].index"),
    ):
        request = index_request(video_id, 1, _processed(video_id), owner_id=uuid.uuid4())
        mutate(request)
        with pytest.raises(InvalidArgument) as err:
            index_from_pb(request)
        assert err.value.field_violations[0].field == field
