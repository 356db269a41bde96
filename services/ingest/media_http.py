"""HTTP server for blobs (videos, thumbnails) under ``/media/<key>``, with Range support for playback.

Envoy routes its ``/media/`` prefix here, so links in API answers (``thumbnail_uri``, ``playback_uri``)
work from a browser.
"""

from __future__ import annotations

from aiohttp import web

from services.common.blobstore import LocalBlobStore
from services.common.errors import InvalidArgument


def media_app(blobs: LocalBlobStore) -> web.Application:
    async def serve(request: web.Request) -> web.StreamResponse:
        try:
            path = blobs.local_path(request.match_info["key"])
        except InvalidArgument:
            raise web.HTTPBadRequest(text="invalid media key") from None
        if not path.is_file() or path.name.endswith((".tmp", ".part")):
            raise web.HTTPNotFound(text="no such media")
        return web.FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/media/{key:.+}", serve)
    app.router.add_get("/healthz", health)
    return app


async def start_media_server(blobs: LocalBlobStore, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(media_app(blobs), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
