"""An upload that is an HLS playlist (or another meta format) pointing at files on the server is refused
without ffmpeg reading those files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.pipeline.media import validate_video
from tests.media import make_scene_video

pytestmark = pytest.mark.integration


@pytest.fixture
def meta_uploads(tmp_path: Path) -> list[Path]:
    secret = make_scene_video(tmp_path / "secret.mp4", audio=False)
    segment = tmp_path / "secret.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(secret), "-c", "copy", "-f", "mpegts", str(segment)],
                   check=True)
    playlist = tmp_path / "upload.mp4"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:40\n#EXTINF:36.0,\n{segment}\n#EXT-X-ENDLIST\n")
    # Unrestricted, ffprobe would follow it (the reason for the guard):
    plain = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=format_name", "-of", "csv=p=0",
                            str(playlist)], capture_output=True, text=True, check=False)
    assert plain.stdout.strip() == "hls"
    concat = tmp_path / "concat.mp4"
    concat.write_text(f"ffconcat version 1.0\nfile '{segment}'\n")
    return [playlist, concat]


async def test_playlist_pointing_at_local_files_is_refused(meta_uploads: list[Path]) -> None:
    for upload in meta_uploads:
        with pytest.raises(InvalidArgument) as err:
            await validate_video(upload)
        assert err.value.field_violations[0].field == "video"
