"""Blob storage for sources, thumbnails and sidecar subtitles, behind a small Protocol.

Keys are relative slash-separated paths (``videos/<id>/source.mp4``). The local store keeps them under
one directory, which the ingest process also serves over HTTP under ``/media/`` (through Envoy).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Protocol

from services.common.errors import InvalidArgument


class BlobStore(Protocol):
    """What the domain needs from a blob store."""

    async def put_file(self, key: str, src: Path, *, move: bool = False) -> None: ...

    async def put_bytes(self, key: str, data: bytes) -> None: ...

    async def get_bytes(self, key: str) -> bytes: ...

    def local_path(self, key: str) -> Path: ...

    async def exists(self, key: str) -> bool: ...

    async def delete_prefix(self, prefix: str) -> None: ...

    async def list_prefixes(self, prefix: str) -> list[tuple[str, float]]:
        """The next level under ``prefix`` (``videos/`` → ``videos/<id>/``, ...) with when each last changed
        (seconds since the epoch)."""

    def url(self, key: str) -> str: ...


def check_key(key: str) -> str:
    """A key must be a clean relative path: no absolute paths, no '..', no empty parts."""
    path = PurePosixPath(key)
    if not key or path.is_absolute() or any(p in ("", ".", "..") for p in key.split("/")):
        raise InvalidArgument(f"invalid blob key {key!r}", reason="INVALID_BLOB_KEY")
    return str(path)


class UrlSigner(Protocol):
    def query(self, key: str) -> str: ...


class LocalBlobStore:
    """Blobs as files under ``root``; ``base_url`` is where they are served (``.../media``). With a ``signer``
    (``services.common.media_urls.MediaSigner``) every URL handed out is signed and expires."""

    def __init__(self, root: Path, base_url: str, signer: UrlSigner | None = None) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.base_url = base_url.rstrip("/")
        self.signer = signer

    def local_path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def put_file(self, key: str, src: Path, *, move: bool = False) -> None:
        dst = self.local_path(key)

        def _copy() -> None:
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(dst.name + ".tmp")
            if move:
                shutil.move(src, tmp)
            else:
                try:  # same filesystem: a hard link costs nothing, and the source stays
                    tmp.unlink(missing_ok=True)
                    os.link(src, tmp)
                except OSError:
                    shutil.copyfile(src, tmp)
            os.replace(tmp, dst)

        await asyncio.to_thread(_copy)

    async def put_bytes(self, key: str, data: bytes) -> None:
        dst = self.local_path(key)

        def _write() -> None:
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(dst.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, dst)

        await asyncio.to_thread(_write)

    async def get_bytes(self, key: str) -> bytes:
        return await asyncio.to_thread(self.local_path(key).read_bytes)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.local_path(key).exists)

    async def delete_prefix(self, prefix: str) -> None:
        target = self.local_path(prefix.rstrip("/"))

        def _delete() -> None:
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            elif target.exists():
                target.unlink()

        await asyncio.to_thread(_delete)

    async def list_prefixes(self, prefix: str) -> list[tuple[str, float]]:
        base = self.local_path(prefix.rstrip("/"))

        def _list() -> list[tuple[str, float]]:
            if not base.is_dir():
                return []
            found = []
            for child in base.iterdir():
                try:  # a directory's time moves whenever a blob is added under it: its newest write
                    found.append((f"{prefix.rstrip('/')}/{child.name}/", child.stat().st_mtime))
                except FileNotFoundError:
                    continue  # deleted meanwhile
            return found

        return await asyncio.to_thread(_list)

    def url(self, key: str) -> str:
        if not key:
            return ""
        key = check_key(key)
        return f"{self.base_url}/{key}?{self.signer.query(key)}" if self.signer else f"{self.base_url}/{key}"
