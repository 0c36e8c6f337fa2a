"""The server's limits: their defaults and one check of them (for `create_app` and `textebm serve`
alike), and pure ASGI middlewares: request body limits (413 for size, 408 for time) and headers for
the playground page. Light to import: `textebm serve --help` reads the defaults from here."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from server.errors import shutting_down
from textebm.config import MAX_DECODE_LENGTH
from textebm.errors import UserError

DEFAULTS = {
    "max_n": 64,
    "max_length": 100,
    "max_prior_steps": 1000,
    "queue_size": 256,
    "max_batch_sentences": 256,
    "max_body_bytes": 16 * 1024,
}


def check_settings(limits: dict, api_key: str | None, spelled: Callable[[str], str] = str) -> None:
    """The limits (each a positive integer, a batch at least a request's most sentences) and the API key
    (not blank, printable ASCII), before anything loads; a UserError naming the setting as the caller
    spells it (`spelled`: e.g. --max-n for max_n on the command line)."""
    for name, value in limits.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{spelled(name)} must be a positive integer, not {value!r}")
    if limits.get("max_length", 1) > MAX_DECODE_LENGTH:  # one request could decode for hours
        raise UserError(f"{spelled('max_length')} must be at most {MAX_DECODE_LENGTH}, not {limits['max_length']}")
    if limits.get("max_batch_sentences", DEFAULTS["max_batch_sentences"]) < limits.get("max_n", DEFAULTS["max_n"]):
        raise UserError(f"{spelled('max_batch_sentences')} ({limits['max_batch_sentences']}) must be at least "
                        f"{spelled('max_n')} ({limits.get('max_n', DEFAULTS['max_n'])})")
    if api_key is not None and not api_key.strip():
        raise UserError(f"{spelled('api_key')} must not be empty")
    if api_key is not None and not (api_key.isascii() and api_key.isprintable()):
        # HTTP carries header values as bytes that servers read as Latin-1: a key outside printable
        # ASCII would be sent one way by one client and another way by the next.
        raise UserError(f"{spelled('api_key')} must be printable ASCII")


class BodyLimitMiddleware:
    """Answers 413 for a body over `max_bytes`, by Content-Length or by counting a streamed body.

    The body is read here, up to the limit, and replayed to the app: nothing downstream ever holds
    more than `max_bytes` of a request. An oversized body is read to its end and dropped before the
    413 goes out, up to `drain_bytes`: a server that closes on unread data makes the kernel reset the
    connection, and a client still sending then gets the reset instead of the 413. Past `drain_bytes`
    the 413 goes out at once (a client sending that much is told as best the connection allows).

    A body that stops arriving for `idle_s` seconds, or is not whole `total_s` seconds after the request
    came, is answered 408: without them a client that declares 100 bytes and sends one, or sends a byte
    every few seconds, holds its connection (and a file descriptor) for ever. Once the server begins to
    stop (the event `stopping()` gives is set: the serving loop's own, made in the app's lifespan), a body
    still arriving is answered 503 at once instead of holding the shutdown for its grace period."""

    def __init__(self, app, max_bytes: int, drain_bytes: int = 1 << 20, idle_s: float = 30.0, total_s: float = 60.0,
                 stopping: Callable[[], asyncio.Event | None] | None = None):
        self.app, self.max_bytes, self.drain_bytes = app, max_bytes, drain_bytes
        self.idle_s, self.total_s, self.stopping = idle_s, total_s, stopping

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await _reply(send, 400, "Content-Length: not a number")
            if declared > self.max_bytes:
                return await self._too_large(receive, send, drain=declared <= self.drain_bytes)
        chunks, size = [], 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.total_s
        while True:
            try:
                message = await self._next(receive, min(self.idle_s, deadline - loop.time()))
            except TimeoutError:
                if loop.time() >= deadline:
                    return await _reply(send, 408, f"body: not whole {self.total_s:g} s after the request came")
                return await _reply(send, 408, f"body: nothing more of it arrived in {self.idle_s:g} s")
            if message is None:
                return await _reply(send, 503, shutting_down().detail)
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._too_large(receive, send, drain=message.get("more_body", False), read=size)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _next(self, receive, timeout: float):
        """The next message of the request, None once the server begins to stop; TimeoutError after `timeout`."""
        event = self.stopping() if self.stopping is not None else None
        if event is None:
            return await asyncio.wait_for(receive(), max(timeout, 0))
        getting = asyncio.ensure_future(receive())
        stopping = asyncio.ensure_future(event.wait())
        try:
            done, _ = await asyncio.wait({getting, stopping}, timeout=max(timeout, 0),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (getting, stopping):
                if not task.done():
                    task.cancel()
        if getting in done:
            return getting.result()
        if stopping in done:
            return None
        raise TimeoutError

    async def _too_large(self, receive, send, drain: bool, read: int = 0):
        while drain and read <= self.drain_bytes:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            read += len(message.get("body", b""))
            drain = message.get("more_body", False)
        await _reply(send, 413, f"body: larger than the limit of {self.max_bytes} bytes")


async def _reply(send, status: int, detail: str) -> None:
    payload = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})


class SecurityHeadersMiddleware:
    """The playground may load only from this server (`default-src 'self'`): no CDN, nothing outside."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not (scope["path"] == "/" or scope["path"].startswith("/static/")):
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + [
                    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'"),
                    (b"x-content-type-options", b"nosniff")]
            await send(message)

        await self.app(scope, receive, send_with_headers)
