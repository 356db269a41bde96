"""What the server interceptors share about the handlers they wrap."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any


async def stream_results(result: Any) -> AsyncIterator[Any]:
    """The messages of a streaming handler's ``result``, whichever way grpc.aio lets a handler answer: an async
    generator, a coroutine that writes with ``context.write()`` (nothing to yield), or a plain iterator."""
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    elif inspect.isawaitable(result):
        await result
    else:
        for item in result:
            yield item
