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


def _trickle(sent, gap_s):
    """A receive that sends a byte every `gap_s` seconds and never the end of the body."""

    async def receive():
        await asyncio.sleep(gap_s)
        return {"type": "http.request", "body": b"x", "more_body": True}

    async def send(message):
        sent.append(message)

    return receive, send


async def _never_the_app(scope, receive, send):
    raise AssertionError("the app must not see a body that never arrived whole")


def test_a_body_that_trickles_is_a_408_once_its_whole_time_is_up():
    # the 408 was per gap: a byte every 20 s held the connection for days
    sent = []
    receive, send = _trickle(sent, 0.01)
    middleware = BodyLimitMiddleware(_never_the_app, max_bytes=10**6, idle_s=0.05, total_s=0.2)
    asyncio.run(asyncio.wait_for(middleware({"type": "http", "headers": []}, receive, send), 5))
    assert status(sent) == 408
    assert json.loads(sent[1]["body"])["detail"] == "body: not whole 0.2 s after the request came"


def test_a_body_still_arriving_when_the_server_stops_is_a_503_at_once():
    # it held the shutdown for its 30 s grace, then got a plain-text 500 and left a traceback
    sent = []
    receive, send = _trickle(sent, 0.01)

    async def scenario():
        stopping = asyncio.Event()
        middleware = BodyLimitMiddleware(_never_the_app, max_bytes=10**6, idle_s=60, total_s=60,
                                         stopping=lambda: stopping)
        call = asyncio.ensure_future(middleware({"type": "http", "headers": []}, receive, send))
        await asyncio.sleep(0.05)
        assert not call.done()
        stopping.set()
        await asyncio.wait_for(call, 5)

    asyncio.run(scenario())
    assert status(sent) == 503
    assert json.loads(sent[1]["body"])["detail"].startswith("server shutting down")


def test_a_connection_whose_request_head_does_not_come_is_closed():
    # uvicorn times a connection out only after an answer: idle sockets and half-sent heads were held for
    # ever, and a few hundred of them locked every other client out
    import socket
    from urllib.parse import urlparse

    import httpx
    from server_fixtures import live_server

    from server.launch import head_deadline_protocol

    async def app(scope, receive, send):
        if scope["path"] == "/slow":
            await asyncio.sleep(0.8)  # longer than the head deadline: a request at work is not cut
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    with live_server(app, lifespan="off", http=head_deadline_protocol(0.3)) as url:
        address = (urlparse(url).hostname, urlparse(url).port)
        idle, partial = socket.create_connection(address), socket.create_connection(address)
        partial.sendall(b"POST /generate HTTP/1.1\r\nHo")
        for connection in (idle, partial):
            connection.settimeout(10)
            assert connection.recv(1) == b""  # closed by the server (a timeout here: still held)
            connection.close()
        with httpx.Client(base_url=url, timeout=10) as c:
            assert c.get("/slow").text == "ok" and c.get("/").text == "ok"  # one connection, two requests
