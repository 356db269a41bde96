"""Media served through Envoy can never act as a page: an MP4 uploaded as x.html / x.svg / x.m3u8 is
stored as ``.mp4`` and served as ``video/mp4`` with ``nosniff`` and a locked-down CSP; thumbnails are
JPEG; Range requests still work; a blob stored under a client's extension before the allow-list is
served as ``application/octet-stream``. Links are signed: the ones in API answers play, unsigned, altered or
expired ones are 403."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import grpc
import httpx
import pytest
from clipmind.ingest.v1 import ingest_service_pb2 as ingest_pb

from tests.e2e.clients import media_signer, rest_upload, wait_ready
from tests.media import SceneSpec, make_scene_video

pytestmark = pytest.mark.e2e

NAMES = ("x.html", "x.svg", "x.m3u8")


@pytest.fixture(scope="module")
def uploaded(tmp_path_factory: pytest.TempPathFactory, rest: httpx.Client, channel: grpc.Channel) -> dict:
    """Each of ``NAMES`` (the same 2 s MP4) uploaded over REST, then processed (for its thumbnail)."""
    folder = tmp_path_factory.mktemp("serving")
    video = make_scene_video(folder / "two-seconds.mp4", [SceneSpec(2.0, "testsrc2")], audio=False)
    created = {}
    for name in NAMES:
        path = folder / name
        path.write_bytes(video.read_bytes())
        response = rest_upload(rest, path, title=name)
        assert response.status_code == 200, response.text
        created[name] = response.json()
    return {name: (body, wait_ready(channel, body["name"])) for name, body in created.items()}


@pytest.mark.parametrize("name", NAMES)
def test_upload_named_like_a_page_is_stored_and_served_as_video(
    name: str, uploaded: dict, rest: httpx.Client
) -> None:
    body, final = uploaded[name]
    assert body["filename"] == name  # the client's name is kept as a fact, not used for the blob
    playback = body["playbackUri"]
    assert urlsplit(playback).path.endswith("/source.mp4"), playback
    assert urlsplit(final.playback_uri).path == urlsplit(playback).path  # signed anew in each answer

    whole = rest.get(playback)
    assert whole.status_code == 200
    assert whole.headers["content-type"] == "video/mp4"
    _assert_locked_down(whole)
    assert int(whole.headers["content-length"]) == body_size(body)

    part = rest.get(playback, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and len(part.content) == 100
    assert part.content == whole.content[100:200]
    assert part.headers["content-type"] == "video/mp4"
    _assert_locked_down(part)

    assert final.state == ingest_pb.Video.STATE_READY, final.failure_reason
    thumb = rest.get(final.thumbnail_uri)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content[:2] == b"\xff\xd8"
    _assert_locked_down(thumb)


def test_blob_stored_under_a_client_extension_is_served_as_bytes(
    blob_dir: Path, endpoints, mesh, rest: httpx.Client  # type: ignore[no-untyped-def]
) -> None:
    key = f"videos/{uuid.uuid4()}/source.html"
    (blob_dir / key).parent.mkdir(parents=True)
    (blob_dir / key).write_bytes(b"<html><script>alert(document.cookie)</script></html>")
    got = rest.get(f"{endpoints.media_base_url}/{key}?{media_signer(mesh).query(key)}")
    assert got.status_code == 200
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers["content-disposition"] == "attachment"
    _assert_locked_down(got)


def test_unsigned_altered_and_expired_links_are_refused(uploaded: dict, mesh, anonymous: httpx.Client) -> None:  # type: ignore[no-untyped-def]
    """Through Envoy, with no credential at all: the signed link is the capability, and nothing else is."""
    body, _ = uploaded[NAMES[0]]
    link = urlsplit(body["playbackUri"])
    params = dict(parse_qsl(link.query))
    assert anonymous.get(link.geturl(), headers={"Range": "bytes=0-99"}).status_code == 206
    key = link.path.removeprefix("/media/")
    expired = media_signer(mesh, ttl_s=1).query(key, now=time.time() - 60)
    refused = {
        "unsigned": link._replace(query="").geturl(),
        "expired": link._replace(query=expired).geturl(),
        "expiry moved": link._replace(query=urlencode({**params, "exp": str(int(params["exp"]) + 60)})).geturl(),
        "signature altered": link._replace(query=urlencode({**params, "sig": params["sig"][::-1]})).geturl(),
        "another blob": link._replace(path=link.path.replace("source.mp4", "thumbnail.jpg")).geturl(),
    }
    for why, url in refused.items():
        assert anonymous.get(url, headers={"Range": "bytes=0-99"}).status_code == 403, why


def body_size(video: dict) -> int:
    return int(video["sizeBytes"])


def _assert_locked_down(response: httpx.Response) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "sandbox" in csp
