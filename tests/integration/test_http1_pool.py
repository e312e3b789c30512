"""workers.gateways.http1 against a real HTTP/1.1 server (aiohttp's): keep-alive reuse,
chunked bodies, Connection: close, a server that drops idle connections, a
cancelled request that must not leave its late answer for the next one, and the
callback path (``start``) with its deadline sweep."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from workers.gateways.http1 import Answer, ConnectionFailed, Http1Pool, Response

REQUEST = b"POST /send HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\n\r\n{}"


async def _send(request: web.Request) -> web.StreamResponse:
    await request.read()
    mode = request.query.get("mode", "")
    if mode == "slow":
        await asyncio.sleep(0.3)
        return web.Response(text="late")
    if mode == "chunked":
        response = web.StreamResponse(status=503, headers={"Retry-After": "4"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b'{"error":', b'{"status":"UNAVAILABLE"}', b"}"):
            await response.write(part)
        await response.write_eof()
        return response
    if mode == "close":
        return web.Response(text="bye", headers={"Connection": "close"})
    return web.Response(text=f"ok {request.transport.get_extra_info('peername')[1]}")


@pytest.fixture
async def server() -> AsyncIterator[web.TCPSite]:
    app = web.Application()
    app.router.add_post("/send", _send)
    runner = web.AppRunner(app, keepalive_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield site
    await runner.cleanup()


@contextlib.asynccontextmanager
async def _pool(site: web.TCPSite, **kwargs: float) -> AsyncIterator[Http1Pool]:
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    pool = Http1Pool("127.0.0.1", port, ssl_context=None, **kwargs)  # type: ignore[arg-type]
    try:
        yield pool
    finally:
        await pool.close()


def _request(mode: str = "") -> bytes:
    return REQUEST.replace(b"/send", b"/send?mode=" + mode.encode()) if mode else REQUEST


async def test_connections_are_kept_alive_and_bounded(server: web.TCPSite) -> None:
    async with _pool(server, max_connections=8) as pool:
        responses = await asyncio.gather(*(pool.request(REQUEST) for _ in range(400)))
        assert {r.status for r in responses} == {200}
        assert pool.connects <= 8
        assert len({r.body for r in responses}) == pool.connects   # one client port each


async def test_chunked_response_and_headers(server: web.TCPSite) -> None:
    async with _pool(server) as pool:
        response = await pool.request(_request("chunked"))
        assert response.status == 503
        assert response.headers["retry-after"] == "4"
        assert response.body == b'{"error":{"status":"UNAVAILABLE"}}'
        assert (await pool.request(REQUEST)).status == 200
        assert pool.connects == 1


async def test_connection_close_is_not_reused(server: web.TCPSite) -> None:
    async with _pool(server) as pool:
        assert (await pool.request(_request("close"))).body == b"bye"
        assert (await pool.request(REQUEST)).status == 200
        assert pool.connects == 2
        assert pool.open == 1


async def test_idle_connection_dropped_by_the_server_is_replaced(server: web.TCPSite) -> None:
    async with _pool(server) as pool:
        assert (await pool.request(REQUEST)).status == 200
        await asyncio.sleep(1.0)     # past the server's keep-alive timeout
        assert (await pool.request(REQUEST)).status == 200
        assert pool.connects == 2


async def test_cancelled_request_does_not_leak_its_answer(server: web.TCPSite) -> None:
    async with _pool(server, max_connections=1) as pool:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await pool.request(_request("slow"))
        response = await pool.request(REQUEST)
        assert response.body.startswith(b"ok")       # not the slow request's "late"
        assert pool.connects == 2
        await asyncio.sleep(0.4)                      # the late answer arrives nowhere
        assert (await pool.request(REQUEST)).body.startswith(b"ok")


async def test_waiting_for_a_busy_pool_counts_against_the_timeout(
    server: web.TCPSite,
) -> None:
    async with _pool(server, max_connections=1, request_timeout=5) as pool:
        slow = asyncio.create_task(pool.request(_request("slow")))   # 0.3 s
        await asyncio.sleep(0.05)
        pool.request_timeout = 0.1
        with pytest.raises(TimeoutError):
            await pool.request(REQUEST)        # never got the one connection
        assert (await slow).body == b"late"
        assert (await pool.request(REQUEST)).status == 200
        assert pool.open == 1 and pool.connects == 1


class _Answers(list[Answer]):
    """A ``start`` callback that keeps what it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.more = asyncio.Event()

    def __call__(self, answer: Answer) -> None:
        self.append(answer)
        self.more.set()

    async def wait(self, count: int, within: float = 5.0) -> None:
        async with asyncio.timeout(within):
            while len(self) < count:
                self.more.clear()
                await self.more.wait()


async def test_start_answers_through_its_callback(server: web.TCPSite) -> None:
    async with _pool(server, max_connections=4) as pool:
        answers = _Answers()
        for _ in range(200):
            pool.start(REQUEST, answers)     # returns at once
        assert len(pool.queue) == 196 and pool.open == 4
        await answers.wait(200)
        assert all(isinstance(a, Response) and a.status == 200 for a in answers)
        assert pool.connects == 4 and len(pool.idle) == 4 and not pool.busy
        await asyncio.sleep(0.05)
        assert len(answers) == 200                  # each answered once


async def test_a_request_past_its_deadline_ends_in_timeout_error(server: web.TCPSite) -> None:
    async with _pool(server, max_connections=1, request_timeout=0.1) as pool:
        answers = _Answers()
        pool.start(_request("slow"), answers)   # answered after 0.3 s
        pool.start(REQUEST, answers)            # queued behind it
        await answers.wait(2, within=0.3)         # both time out before that
        assert [type(a) for a in answers] == [TimeoutError, TimeoutError]
        assert pool.open == 0                          # out of step: closed
        response = await pool.request(REQUEST)
        assert response.body.startswith(b"ok")         # not the slow one's "late"
        await asyncio.sleep(0.3)
        assert len(answers) == 2


async def test_close_ends_what_is_in_flight_and_queued(server: web.TCPSite) -> None:
    answers = _Answers()
    async with _pool(server, max_connections=1) as pool:
        pool.start(_request("slow"), answers)
        pool.start(REQUEST, answers)
        await asyncio.sleep(0.05)
    await answers.wait(2)
    assert all(isinstance(a, ConnectionFailed) for a in answers)
    pool.start(REQUEST, answers)                 # a closed pool refuses at once
    assert isinstance(answers[-1], ConnectionFailed)


async def test_a_refused_connection_is_connection_failed() -> None:
    site_port = 1     # nothing listens there
    pool = Http1Pool("127.0.0.1", site_port, ssl_context=None, max_connections=2)
    try:
        answers = _Answers()
        pool.start(REQUEST, answers)
        await answers.wait(1)
        assert isinstance(answers[0], ConnectionFailed)
        assert pool.open == 0
        with pytest.raises(ConnectionFailed):
            await pool.request(REQUEST)
    finally:
        await pool.close()
