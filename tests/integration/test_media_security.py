"""Uploads are bytes from strangers: no decoder follows a playlist to other files on this host, and a
stored copy is named and served by what ffprobe found, never by the client's filename.

The playlists (HLS, ffconcat, DASH) point at a "canary" MPEG-TS file next to them and are renamed
``.mp4``. Unrestricted, ffprobe reads the canary through each of them (checked below, so the fixtures
keep meaning something); every decoder here must refuse without reading it. Reading is detected by the
canary's access time, set far in the past first (the disk may be mounted relatime: a read then updates
an atime older than the mtime), and by the decoders producing nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.common.blobstore import LocalBlobStore
from services.common.errors import ClipMindError, InvalidArgument
from services.ingest.ingestor import _extension
from services.ingest.media_http import start_media_server
from services.launcher import free_port
from services.media.decode import audio_windows, extract_frame
from services.media.media_types import MEDIA_TYPES, container_extension, media_type
from services.media.probe import probe, validate_video
from services.media.scenes import detect_scenes, detect_scenes_async
from tests.media import SceneSpec, make_scene_video, make_still_image

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg/ffprobe not installed"),
]

LONG_AGO = 946_684_800  # 2000-01-01T00:00:00Z
_SHOT = SceneSpec(2.0, "testsrc2")
_CANARY_SCENES = (SceneSpec(4.0, "testsrc2"), SceneSpec(4.0, "color=c=red"))


@dataclass(frozen=True)
class Canary:
    path: Path
    atime_tracked: bool  # False on a noatime mount: then only "no frames came out" is checked

    def arm(self) -> None:
        os.utime(self.path, (LONG_AGO, self.path.stat().st_mtime))

    def was_read(self) -> bool:
        return self.atime_tracked and self.path.stat().st_atime != LONG_AGO


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("security")


@pytest.fixture(scope="module")
def canary(media_dir: Path) -> Canary:
    video = make_scene_video(media_dir / "canary-src.mp4", _CANARY_SCENES, audio=True)
    path = media_dir / "canary.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(video), "-map", "0:v", "-map", "0:a", "-c", "copy",
                    "-f", "mpegts", str(path)], check=True)  # fmt: skip
    os.utime(path, (LONG_AGO, path.stat().st_mtime))
    path.read_bytes()
    return Canary(path, atime_tracked=path.stat().st_atime != LONG_AGO)


def _playlists(media_dir: Path, canary: Path) -> dict[str, Path]:
    hls = media_dir / "hls.mp4"
    hls.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:8\n#EXTINF:8.0,\n{canary}\n#EXT-X-ENDLIST\n")
    concat = media_dir / "concat.mp4"  # relative name: the concat demuxer's "safe" mode allows it
    concat.write_text(f"ffconcat version 1.0\nfile '{canary.name}'\n")
    dash = media_dir / "dash.mp4"
    dash.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT8S"'
        ' minBufferTime="PT1S" profiles="urn:mpeg:dash:profile:isoff-on-demand:2011"><Period>'
        '<AdaptationSet mimeType="video/mp2t"><Representation id="1" bandwidth="100000" width="320" height="240">'
        f"<BaseURL>{canary.name}</BaseURL></Representation></AdaptationSet></Period></MPD>\n"
    )
    return {"hls": hls, "concat": concat, "dash": dash}


@pytest.fixture(scope="module")
def playlists(media_dir: Path, canary: Canary) -> dict[str, Path]:
    made = _playlists(media_dir, canary.path)
    for kind, playlist in made.items():  # unrestricted, ffprobe follows each of them to the canary
        canary.arm()
        plain = subprocess.run(["ffprobe", "-v", "quiet", "-show_entries", "stream=codec_type", "-of", "csv=p=0",
                                str(playlist)], capture_output=True, text=True, check=False)  # fmt: skip
        assert canary.was_read() if canary.atime_tracked else "video" in plain.stdout, kind
    return made


KINDS = ["hls", "concat", "dash"]


@pytest.mark.parametrize("kind", KINDS)
async def test_probe_and_validate_refuse_playlists(kind: str, playlists: dict[str, Path], canary: Canary) -> None:
    canary.arm()
    for check in (probe, validate_video):
        with pytest.raises(InvalidArgument) as err:
            await check(playlists[kind])
        assert err.value.reason == "UNREADABLE_MEDIA"
        assert err.value.field_violations[0].field == "video"
    assert not canary.was_read()


@pytest.mark.parametrize("kind", KINDS)
async def test_scene_detection_never_reads_through_a_playlist(
    kind: str, playlists: dict[str, Path], canary: Canary
) -> None:
    canary.arm()
    with pytest.raises(InvalidArgument) as err:
        detect_scenes(playlists[kind], 8.0)  # the OpenCV decoder used to follow ffconcat
    assert err.value.reason == "UNREADABLE_MEDIA"
    with pytest.raises(InvalidArgument):
        await detect_scenes_async(playlists[kind], 8.0)
    assert not canary.was_read()


@pytest.mark.parametrize("kind", KINDS)
async def test_frames_and_audio_never_read_through_a_playlist(
    kind: str, playlists: dict[str, Path], canary: Canary, media_dir: Path
) -> None:
    canary.arm()
    thumb = media_dir / f"{kind}.jpg"
    with pytest.raises(ClipMindError):
        await extract_frame(playlists[kind], 5.0, thumb, duration_s=8.0)
    assert not thumb.exists() and not thumb.with_name(thumb.name + ".partial").exists()
    windows = []
    with pytest.raises(InvalidArgument):
        async for window in audio_windows(playlists[kind], 16_000, 5.0):
            windows.append(window)
    assert windows == []
    assert not canary.was_read()


# --- stored names and served types ------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_mp4(media_dir: Path) -> Path:
    return make_scene_video(media_dir / "small.mp4", [_SHOT], audio=True)


@pytest.mark.parametrize("name", ["x.html", "x.svg", "x.m3u8", "x.mpd", "noextension"])
async def test_a_video_gets_a_video_extension_whatever_its_name(name: str, small_mp4: Path, media_dir: Path) -> None:
    upload = media_dir / "named" / name
    upload.parent.mkdir(exist_ok=True)
    shutil.copyfile(small_mp4, upload)
    info = await probe(upload)
    assert _extension(info.format_name, info.codecs) == ".mp4"
    assert media_type(f"source{info.file_extension}") == "video/mp4"


_CONTAINERS = [  # (file name, ffmpeg arguments, stored extension, served type)
    ("c.mov", ["-c:v", "libx264", "-preset", "ultrafast"], ".mp4", "video/mp4"),
    ("c.mkv", ["-c:v", "libx264", "-preset", "ultrafast"], ".mkv", "video/x-matroska"),
    ("c.webm", ["-c:v", "libvpx", "-deadline", "realtime"], ".webm", "video/webm"),
    ("c-vp8.mkv", ["-c:v", "libvpx", "-deadline", "realtime"], ".webm", "video/webm"),
    ("c.avi", ["-c:v", "mpeg4"], ".avi", "video/x-msvideo"),
    ("c.ts", ["-c:v", "libx264", "-preset", "ultrafast", "-f", "mpegts"], ".ts", "video/mp2t"),
    ("c.flv", ["-c:v", "flv"], ".flv", "video/x-flv"),
    ("c.wmv", ["-c:v", "wmv2"], ".wmv", "video/x-ms-wmv"),
    ("c.ogv", ["-c:v", "libtheora"], ".ogv", "video/ogg"),
    ("c.mpg", ["-c:v", "mpeg2video"], ".mpg", "video/mpeg"),
    ("c.mxf", ["-c:v", "mpeg2video"], ".mxf", "application/mxf"),
]


@pytest.fixture(scope="module")
def containers(media_dir: Path) -> dict[str, Path]:
    """One short video per container of ``_CONTAINERS``, each renamed ``*.html``."""
    made = {}
    for name, codec_args, _, _ in _CONTAINERS:
        path = media_dir / "containers" / name
        path.parent.mkdir(exist_ok=True)
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                        "testsrc2=size=160x120:rate=25:duration=1", *codec_args, "-pix_fmt", "yuv420p", str(path)],
                       check=True)  # fmt: skip
        made[name] = path.with_name(path.name + ".html")  # the name the client chose says nothing
        os.replace(path, made[name])
    return made


@pytest.mark.parametrize(("name", "codec_args", "ext", "served"), _CONTAINERS, ids=[c[0] for c in _CONTAINERS])
async def test_every_allowed_container_maps_to_its_extension_and_type(
    name: str, codec_args: list[str], ext: str, served: str, containers: dict[str, Path]
) -> None:
    info = await probe(containers[name])
    assert info.file_extension == ext, info.format_name
    assert MEDIA_TYPES[ext] == served


def test_unknown_containers_are_stored_as_neutral_bytes() -> None:
    for format_name in ("hls", "concat", "dash", "gif", "image2", "tty", "", "svg_pipe", "html"):
        assert container_extension(format_name) == ".bin"
    assert media_type("source.bin") == "application/octet-stream"


# --- the /media/ server -----------------------------------------------------------------------------


@pytest.fixture
async def media_server(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    blobs = LocalBlobStore(tmp_path / "blobs", "http://unused/media")
    port = free_port()
    runner = await start_media_server(blobs, "127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}/media", blobs.root
    finally:
        await runner.cleanup()


async def test_media_server_types_by_extension_only(media_server: tuple[str, Path], small_mp4: Path) -> None:
    base, root = media_server
    video = root / "videos" / "v1" / "source.mp4"
    video.parent.mkdir(parents=True)
    shutil.copyfile(small_mp4, video)
    make_still_image(root / "videos" / "v1" / "thumbnail.jpg")
    (root / "videos" / "v1" / "subtitles.vtt").write_text("WEBVTT\n\n00:00.000 --> 00:01.000\n<b>hi</b>\n")
    # Blobs stored before the allow-list under the client's extension, holding whatever the client sent:
    legacy = {
        "source.html": b"<html><script>alert(document.cookie)</script></html>",
        "source.svg": b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        "source.m3u8": b"#EXTM3U\n#EXTINF:1,\nhttp://example.com/a.ts\n",
        "source.mpd": b'<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011"/>',
        "source.xhtml": b'<html xmlns="http://www.w3.org/1999/xhtml"><script>alert(1)</script></html>',
        "source": b"<html><script>alert(1)</script></html>",
    }
    for name, data in legacy.items():
        (root / "videos" / "old" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "videos" / "old" / name).write_bytes(data)

    async with httpx.AsyncClient(base_url=base) as client:
        got = await client.get("/videos/v1/source.mp4", headers={"Range": "bytes=0-99"})
        assert got.status_code == 206 and len(got.content) == 100
        assert got.headers["content-type"] == "video/mp4"
        _assert_locked_down(got)
        assert got.headers["cache-control"] == "private, max-age=3600"
        whole = await client.get("/videos/v1/source.mp4")
        assert whole.status_code == 200 and whole.content == video.read_bytes()
        assert "content-disposition" not in whole.headers  # plays inline
        thumb = await client.get("/videos/v1/thumbnail.jpg")
        assert thumb.headers["content-type"] == "image/jpeg" and thumb.content[:2] == b"\xff\xd8"
        subs = await client.get("/videos/v1/subtitles.vtt")
        assert subs.headers["content-type"] == "text/plain; charset=utf-8"
        _assert_locked_down(subs)
        for name in legacy:
            old = await client.get(f"/videos/old/{name}")
            assert old.status_code == 200, name
            assert old.headers["content-type"] == "application/octet-stream", name
            assert old.headers["content-disposition"] == "attachment", name
            _assert_locked_down(old)
        missing = await client.get("/videos/v1/nothing.html")
        assert missing.status_code == 404 and "html" not in missing.headers["content-type"]
        _assert_locked_down(missing)
        head = await client.head("/videos/v1/source.mp4")
        assert head.status_code == 200 and head.headers["content-type"] == "video/mp4"
        _assert_locked_down(head)


def _assert_locked_down(response: httpx.Response) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "sandbox" in csp
