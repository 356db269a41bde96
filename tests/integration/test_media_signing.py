"""Signed media links against the real media server: a signed URL plays, with Range requests; unsigned,
expired, tampered (key, expiry, signature) or foreign-key URLs are 403, and the answer tells nothing about
whether the blob exists."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from services.common.blobstore import LocalBlobStore
from services.common.media_urls import MAX_TTL_S, MediaSigner
from services.ingest.media_http import start_media_server
from services.launcher import free_port

pytestmark = pytest.mark.integration

KEYS = {"k1": b"1" * 32, "k2": b"2" * 32}


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[LocalBlobStore, httpx.AsyncClient]]:
    port = free_port()
    signer = MediaSigner(KEYS, "k1", ttl_s=60)
    blobs = LocalBlobStore(tmp_path / "blobs", f"http://127.0.0.1:{port}/media", signer)
    await blobs.put_bytes("videos/v1/source.mp4", bytes(range(256)) * 40)
    runner = await start_media_server(blobs, "127.0.0.1", port, MediaSigner(KEYS, "k2"))  # k2 active: verifies k1
    try:
        async with httpx.AsyncClient() as client:
            yield blobs, client
    finally:
        await runner.cleanup()


def _with(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return parts._replace(query="&".join(f"{k}={v}" for k, v in query.items() if v != "")).geturl()


async def test_a_signed_url_plays_with_range_requests(served) -> None:  # type: ignore[no-untyped-def]
    blobs, client = served
    url = blobs.url("videos/v1/source.mp4")
    assert "sig=" in url and "exp=" in url and "kid=k1" in url
    whole = await client.get(url)
    assert whole.status_code == 200 and len(whole.content) == 10240
    part = await client.get(url, headers={"range": "bytes=256-511"})
    assert part.status_code == 206 and part.content == bytes(range(256))
    assert part.headers["content-range"] == "bytes 256-511/10240"


async def test_unsigned_expired_and_tampered_urls_are_403(served) -> None:  # type: ignore[no-untyped-def]
    blobs, client = served
    url = blobs.url("videos/v1/source.mp4")
    sig = parse_qs(urlsplit(url).query)["sig"][0]
    expired_signer = MediaSigner(KEYS, "k1", ttl_s=1)
    old = expired_signer.query("videos/v1/source.mp4", now=time.time() - 120)
    bad = {
        "unsigned": url.split("?", 1)[0],
        "no signature": _with(url, sig=""),
        "expired": f"{url.split('?', 1)[0]}?{old}",
        "expiry moved": _with(url, exp=str(int(time.time()) + 600)),
        "signature changed": _with(url, sig=("A" if sig[0] != "A" else "B") + sig[1:]),
        "unknown key id": _with(url, kid="k9"),
        "another blob": url.replace("videos/v1/source.mp4", "videos/v1/other.mp4"),
        "signed by a stranger": f"{url.split('?', 1)[0]}?"
                                f"{MediaSigner({'k1': b'x' * 32}, 'k1').query('videos/v1/source.mp4')}",
    }
    for why, target in bad.items():
        response = await client.get(target, headers={"range": "bytes=0-9"})
        assert response.status_code == 403, (why, response.status_code)
        assert "source.mp4" not in response.text


def test_lifetimes_are_bounded() -> None:
    with pytest.raises(ValueError):
        MediaSigner(KEYS, "k1", ttl_s=MAX_TTL_S + 1)
    signer = MediaSigner(KEYS, "k1")
    now = 1_700_000_000.0
    query = dict(p.split("=", 1) for p in signer.query("a/b.jpg", now=now).split("&"))
    assert int(query["exp"]) - now <= MAX_TTL_S
    assert signer.verify("a/b.jpg", query, now=now) is None
    assert signer.verify("a/b.jpg", query, now=now + MAX_TTL_S + 1) == "expired"
