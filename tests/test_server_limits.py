"""The body limit, driven as a bare ASGI app: what it reads, what it replays, what it answers."""

import asyncio
import json

from server.limits import BodyLimitMiddleware


def drive(middleware, chunks, content_length=None):
    """Runs one request through `middleware`; returns (messages read, messages sent, body the app saw)."""
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    read, sent, seen = [], [], []

    async def receive():
        message = messages[len(read)] if len(read) < len(messages) else {"type": "http.disconnect"}
        read.append(message)
        return message

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):
        message = await receive()
        seen.append(message["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    headers = [] if content_length is None else [(b"content-length", str(content_length).encode())]
    asyncio.run(BodyLimitMiddleware(app, **middleware)({"type": "http", "headers": headers}, receive, send))
    return read, sent, seen


def status(sent):
    return sent[0]["status"]


def test_a_body_under_the_limit_reaches_the_app_whole():
    read, sent, seen = drive({"max_bytes": 10}, [b"abc", b"def"])
    assert status(sent) == 200 and seen == [b"abcdef"] and len(read) == 2


def test_an_oversized_body_is_read_to_its_end_before_the_413():
    chunks = [b"x" * 8] * 5
    read, sent, seen = drive({"max_bytes": 10}, chunks, content_length=40)
    assert status(sent) == 413 and seen == []
    assert len(read) == 5  # drained: closing on unread data would reset the client's connection
    assert "limit of 10 bytes" in json.loads(sent[1]["body"])["detail"]


def test_a_streamed_oversized_body_is_drained_too():
    read, sent, _ = drive({"max_bytes": 10}, [b"x" * 8] * 5)
    assert status(sent) == 413 and len(read) == 5


def test_past_the_drain_bound_the_413_goes_out_unread():
    read, sent, _ = drive({"max_bytes": 10, "drain_bytes": 20}, [b"x" * 8] * 5, content_length=40)
    assert status(sent) == 413 and read == []
    read, sent, _ = drive({"max_bytes": 10, "drain_bytes": 20}, [b"x" * 8] * 5)
    assert status(sent) == 413 and len(read) == 3  # 24 bytes read: past the bound, no more


def test_a_bad_content_length_is_a_400():
    _, sent, _ = drive({"max_bytes": 10}, [b"x"], content_length="ten")
    assert status(sent) == 400


def test_a_body_that_stops_arriving_is_a_408():
    # a client that declares 100 bytes and sends 1 held its connection for ever
    sent = []

    async def receive():
        if not sent and not getattr(receive, "once", False):
            receive.once = True
            return {"type": "http.request", "body": b"{", "more_body": True}
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):
        raise AssertionError("the app must not see a body that never arrived")

    middleware = BodyLimitMiddleware(app, max_bytes=1000, idle_s=0.05)
    asyncio.run(asyncio.wait_for(middleware({"type": "http", "headers": [(b"content-length", b"100")]}, receive, send),
                                 5))
    assert status(sent) == 408
    assert json.loads(sent[1]["body"])["detail"] == "body: nothing more of it arrived in 0.05 s"
