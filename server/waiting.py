"""Waiting for the model on a client's behalf, and giving up the place when the client leaves.

A handler is not cancelled when its client disconnects (the ASGI server only reports it through
`receive`), so without a watch an abandoned request still takes its turn on the model: ten of them
made the next small request wait 11 s. Here the wait races a watch on the connection; a client
that leaves cancels its job, which the batcher then skips; a job already running stops within one
step once every client it serves has left (server/batcher.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from server.batcher import QueueFull, ShuttingDown
from server.errors import ApiError, queue_full, shutting_down
from server.metrics import CLIENT_LEFT

T = TypeVar("T")


async def for_the_model(request: Request, job: Awaitable[T]) -> T:
    """`job`'s result (a batcher's `submit` or `call`), or an ApiError: 503 when the wait list is full
    or the server is stopping, 499 when the client left first."""
    batcher = request.app.state.batcher
    waiting = asyncio.ensure_future(job)
    watching = asyncio.ensure_future(_client_left(request))
    try:
        await asyncio.wait({waiting, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiting, watching):
            if not task.done():
                task.cancel()
    if not waiting.done() or waiting.cancelled():
        raise ApiError(CLIENT_LEFT, "the client closed the connection before the answer")
    try:
        return waiting.result()
    except QueueFull:
        raise queue_full(batcher) from None
    except ShuttingDown:
        raise shutting_down() from None


async def _client_left(request: Request) -> None:
    """Returns when the connection closes (the body has been read: `receive` has nothing else to say)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
