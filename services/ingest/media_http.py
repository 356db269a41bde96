"""HTTP server for blobs (videos, thumbnails, sidecars) under ``/media/<key>``, with Range support.

Envoy routes its ``/media/`` prefix here, so links in API answers (``thumbnail_uri``, ``playback_uri``)
work from a browser. Those links are signed and expire (``services.common.media_urls``): a request without a
signature, with a wrong one or past its expiry is 403 (when the store has a signer; tests of the media types
alone run without one). Blobs are user bytes served from the app's origin, so a response never lets a
browser treat one as a page: the media type comes from a fixed map by the key's extension
(``media_types.media_type``: video, JPEG, plain text, else ``application/octet-stream`` as an attachment), never
from content or the ``mimetypes`` tables; every answer carries ``nosniff`` and a CSP that allows nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from aiohttp import web

from services.common.blobstore import LocalBlobStore
from services.common.errors import InvalidArgument
from services.media.media_types import OCTET_STREAM, media_type

CACHE_CONTROL = "private, max-age=3600"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox; frame-ancestors 'none'",
}
"""Sent with every response of this server, errors included."""


class UrlVerifier(Protocol):
    def verify(self, key: str, params: Mapping[str, str]) -> str | None: ...


def media_app(blobs: LocalBlobStore, verifier: UrlVerifier | None = None) -> web.Application:
    async def serve(request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        try:
            path = blobs.local_path(key)
        except InvalidArgument:
            raise web.HTTPBadRequest(text="invalid media key") from None
        if verifier is not None:
            refusal = verifier.verify(key, request.query)
            if refusal is not None:  # checked before the file is looked at: no answer tells what exists
                raise web.HTTPForbidden(text=f"media link {refusal}: ask the API for a fresh one")
        if not path.is_file() or path.name.endswith((".tmp", ".part")):
            raise web.HTTPNotFound(text="no such media")
        content_type = media_type(path.name)
        headers = {"Content-Type": content_type, "Cache-Control": CACHE_CONTROL}
        if content_type == OCTET_STREAM:
            headers["Content-Disposition"] = "attachment"
        return web.FileResponse(path, headers=headers)

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def secure(_: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(SECURITY_HEADERS)

    app = web.Application()
    app.on_response_prepare.append(secure)
    app.router.add_get("/media/{key:.+}", serve)
    app.router.add_get("/healthz", health)
    return app


async def start_media_server(blobs: LocalBlobStore, host: str, port: int,
                             verifier: UrlVerifier | None = None) -> web.AppRunner:
    runner = web.AppRunner(media_app(blobs, verifier), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
