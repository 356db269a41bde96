"""What the server interceptors share about the handlers they wrap."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc


def handler_kind(handler: grpc.RpcMethodHandler) -> tuple[Callable[..., grpc.RpcMethodHandler], Any, bool]:
    """(constructor of the same kind of handler, its behaviour, whether it streams responses): what an
    interceptor needs to wrap a handler's behaviour and rebuild the handler."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler, handler.unary_unary, False
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler, handler.stream_unary, False
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler, handler.unary_stream, True
    return grpc.stream_stream_rpc_method_handler, handler.stream_stream, True


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
