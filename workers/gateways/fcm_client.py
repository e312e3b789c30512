"""geopush's FCM HTTP v1 client: ``messages:send`` over geopush's HTTP/2 client
(``workers.gateways.http2``), plus google-auth for the access token.

HTTP/2 is what Google's own Admin SDKs send with (Node since 12.3, Java since 9.4):
FCM allows about 100 concurrent streams per connection, so 500 sends in flight take 5
connections, the repeated headers (authorization, content type) go as one-byte HPACK
indexes, and the requests of one event-loop turn leave in one write.

The OAuth access token comes from google-auth's ordinary service-account credentials
(the ``token_uri`` in the key file decides where the JWT-bearer grant goes, which is how
the fake gateway is reached). google-auth's ``refresh()`` is synchronous, so it runs in a
worker thread (``asyncio.to_thread``): the RSA signing happens there, and its HTTP
request is handed back to this client's aiohttp session on the event loop through a
small ``google.auth.transport.Request`` adapter. Nothing blocks the loop, and
``requests`` is not needed.

Only one refresh runs at a time; concurrent senders await the same one. A token is
refreshed ``REFRESH_MARGIN_S`` before it expires, and once more after a 401.

``start_body`` answers through a callback and, in the usual case, costs no task
(the FCM sender's hot path).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import functools
import json
import logging
import ssl
import time
import urllib.parse
from collections.abc import Coroutine
from typing import Any

import aiohttp
import google.auth.exceptions
import google.auth.transport
import msgspec
from google.oauth2 import service_account

from workers.gateways.http2 import Http2Pool, Response, StreamError
from workers.gateways.waiting import Done

logger = logging.getLogger(__name__)

_encode_json = msgspec.json.Encoder().encode

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
REFRESH_MARGIN_S = 300.0
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class FcmResponse(msgspec.Struct, frozen=True):
    status: int
    error_code: str | None  # FCM errorCode (UNREGISTERED, ...) or else the error status
    message: str | None
    retry_after: float | None  # seconds, from Retry-After
    name: str | None  # projects/{p}/messages/{id} on success

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def retryable(self) -> bool:
        """Worth sending again later: quota (429) and server-side (5xx) failures."""
        return self.status == 429 or self.status >= 500


class FcmTransportError(Exception):
    """The request didn't get an answer (connection failure, timeout): retryable."""


class FcmAuthError(Exception):
    """The token endpoint refused the service account's grant: not retryable."""


FcmAnswer = FcmResponse | Exception
"""What ``start_body`` hands ``done``: FCM's response, or why there is none
(``FcmTransportError``, ``FcmAuthError``, or a setup error such as a closed client)."""


def _transport_error(message: str) -> Exception:
    error: Exception = google.auth.exceptions.TransportError(message)  # type: ignore[no-untyped-call]
    return error


class _Response(google.auth.transport.Response):
    def __init__(self, status: int, headers: dict[str, str], data: bytes) -> None:
        self._status, self._headers, self._data = status, headers, data

    @property
    def status(self) -> int:
        return self._status

    @property
    def headers(self) -> dict[str, str]:
        return self._headers

    @property
    def data(self) -> bytes:
        return self._data


class _LoopRequest(google.auth.transport.Request):
    """google-auth's transport interface, called from a worker thread, carried out by
    the client's aiohttp session on the event loop."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, session: aiohttp.ClientSession, timeout: float
    ) -> None:
        self._loop, self._session, self._timeout = loop, session, timeout

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> _Response:
        seconds = timeout if timeout is not None else self._timeout
        future = asyncio.run_coroutine_threadsafe(
            self._request(url, method, body, headers, seconds), self._loop
        )
        try:
            return future.result(timeout=seconds + 5)
        except TimeoutError as e:
            future.cancel()
            raise _transport_error(f"token request timed out: {e!r}") from e

    async def _request(
        self, url: str, method: str, body: bytes | None, headers: dict[str, str] | None,
        seconds: float,
    ) -> _Response:
        try:
            async with self._session.request(
                method, url, data=body, headers=headers,
                timeout=aiohttp.ClientTimeout(total=seconds),
            ) as resp:
                data = await resp.read()
                return _Response(resp.status, dict(resp.headers), data)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise _transport_error(f"token request failed: {e!r}") from e


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _error_code_and_message(data: Any) -> tuple[str | None, str | None]:
    """FCM's errorCode (else the error status) and message from an error body."""
    error = data.get("error") if isinstance(data, dict) else None
    code: str | None = None
    message: str | None = None
    if isinstance(error, dict):
        msg = error.get("message")
        message = msg if isinstance(msg, str) else None
        details = error.get("details")
        for detail in details if isinstance(details, list) else []:
            if isinstance(detail, dict) and isinstance(detail.get("errorCode"), str):
                code = detail["errorCode"]
                if detail.get("@type") == FCM_ERROR_TYPE:
                    break
        if code is None and isinstance(error.get("status"), str):
            code = error["status"]
    elif isinstance(error, str):  # an OAuth-style {"error": "...", "error_description"}
        code = error
        desc = data.get("error_description")
        message = desc if isinstance(desc, str) else None
    return code, message


class _Accepted(msgspec.Struct):
    name: str | None = None


_decode_accepted = msgspec.json.Decoder(_Accepted).decode


def parse_response(status: int, body: bytes, retry_after: str | None) -> FcmResponse:
    """An FCM v1 ``messages:send`` answer as an ``FcmResponse``."""
    delay = parse_retry_after(retry_after)
    if status == 200:    # the usual answer, decoded in C; its name is only informative
        try:
            name = _decode_accepted(body).name
        except msgspec.MsgspecError:
            name = None
        return FcmResponse(200, None, None, delay, name)
    try:
        data = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        data = None
    code, message = _error_code_and_message(data)
    if code is None:
        code = _STATUS_NAMES.get(status, "UNKNOWN")
    if message is None and body:
        message = body[:200].decode("utf-8", "replace")
    return FcmResponse(status, code, message, delay, None)


def _consume_exception(task: asyncio.Task[str]) -> None:
    # Waiters get the exception through shield(); this keeps asyncio from logging
    # "exception was never retrieved" when every waiter was cancelled.
    if not task.cancelled():
        task.exception()


class FcmClient:
    """Sends FCM HTTP v1 messages; create it anywhere, use it inside one event loop."""

    def __init__(
        self,
        *,
        service_account_file: str,
        project_id: str | None = None,
        endpoint: str = "https://fcm.googleapis.com",
        timeout: float = 10.0,
        max_connections: int = 5,
        initial_stream_limit: int = 100,
        ca_file: str | None = None,
    ) -> None:
        self._service_account_file = service_account_file
        self._project_id = project_id
        self._timeout_s = timeout
        endpoint_url = urllib.parse.urlsplit(endpoint.rstrip("/"))
        if endpoint_url.scheme not in ("http", "https") or not endpoint_url.hostname:
            raise ValueError(f"FCM endpoint must be an http(s) URL, not {endpoint!r}")
        self._base_path = endpoint_url.path
        self._ca_file = ca_file   # a CA to trust besides the system's (the fake's)
        context = None
        if endpoint_url.scheme == "https":
            context = ssl.create_default_context(cafile=ca_file)
            context.set_alpn_protocols(["h2"])
        # ``http://`` is cleartext HTTP/2 with prior knowledge (the fake, in tests).
        # Until FCM's SETTINGS arrive, assume its usual stream limit.
        self._pool = Http2Pool(
            endpoint_url.hostname, endpoint_url.port or (443 if context else 80),
            ssl_context=context, max_connections=max_connections,
            initial_stream_limit=initial_stream_limit, spread_streams=initial_stream_limit,
            response_table_size=4096, name="FCM", authority=endpoint_url.netloc)
        self._path = b""
        self._fields: tuple[tuple[bytes, bytes], ...] = ()
        self._fields_token: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._credentials: Any = None
        self._setup_lock: asyncio.Lock | None = None
        self._token: str | None = None
        self._token_expires_at = 0.0  # unix seconds
        self._refresh_task: asyncio.Task[str] | None = None
        self._closed = False
        self.token_refreshes = 0

    @property
    def project_id(self) -> str | None:
        """The project messages go to (known after the first send if not given)."""
        return self._project_id

    @property
    def open_connections(self) -> int:
        """Connections to FCM open now (for tests and diagnostics)."""
        return len(self._pool.connections)

    def start_body(self, body: bytes, done: Done[FcmResponse]) -> None:
        """POST ``body`` (``{"message": …}``, encoded); ``done`` is called once with
        FCM's response (its refusals included) or the exception standing for it
        (``FcmTransportError`` when unanswered, ``FcmAuthError`` when the grant is
        refused, RuntimeError once closed).

        The usual case (the client set up, its access token fresh) writes the request
        at once and answers from the connection's callback, which spares a task, a
        future and a chain of coroutines per message: the FCM sender's hot path. The
        rest (first use, a token to refresh, a 401) waits in a task first."""
        token = self._token
        if (token is None or self._closed
                or time.time() >= self._token_expires_at - REFRESH_MARGIN_S):
            self._in_task(self._start_when_ready(body, done), done)
            return
        self._post(body, token, functools.partial(self._response_done, body, token, done))

    def _post(self, body: bytes, token: str, done: Done[Response]) -> None:
        self._pool.start(b"POST", self._path, self._headers(token), (), body,
                         self._pool.deadline(self._timeout_s), done)

    def _response_done(self, body: bytes, token: str, done: Done[FcmResponse],
                  answer: Response | Exception) -> None:
        if isinstance(answer, Response) and answer.status == 401:
            self._in_task(self._after_401(body, token, answer, done), done)
        else:
            self._final(done, answer)

    def _final(self, done: Done[FcmResponse], answer: Response | Exception) -> None:
        result: FcmResponse | Exception
        if isinstance(answer, Response):
            try:
                result = _fcm_response(answer)
            except Exception as exc:   # an answer we cannot read is one we did not get
                result = FcmTransportError(f"unreadable FCM response: {exc!r}")
        else:
            result = _transport_failure(answer, self._timeout_s)
        done(result)

    def _in_task(self, work: Coroutine[Any, Any, None], done: Done[FcmResponse]) -> None:
        self._pool.in_task(work, functools.partial(self._final, done))

    async def _start_when_ready(self, body: bytes, done: Done[FcmResponse]) -> None:
        await self._ready()
        token = await self._access_token()
        self._post(body, token, functools.partial(self._response_done, body, token, done))

    async def _after_401(self, body: bytes, token: str, response: Response,
                         done: Done[FcmResponse]) -> None:
        """A 401: the token was revoked or expired early; one more try with a new one."""
        logger.info("FCM answered 401 (%s); refreshing the access token",
                    _fcm_response(response).message)
        token = await self._access_token(stale=token)
        self._post(body, token, functools.partial(self._final, done))

    async def close(self) -> None:
        self._closed = True
        task = self._refresh_task
        if task is not None and not task.done():
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        await self._pool.close()
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __aenter__(self) -> FcmClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---- internals ----

    async def _ready(self) -> aiohttp.ClientSession:
        """The session for token requests; the credentials and the path are set up too."""
        if self._closed:
            raise RuntimeError("FcmClient is closed")
        if self._session is not None:
            return self._session
        if self._setup_lock is None:
            self._setup_lock = asyncio.Lock()
        async with self._setup_lock:
            if self._credentials is None:
                self._credentials = await asyncio.to_thread(
                    service_account.Credentials.from_service_account_file,
                    self._service_account_file,
                    scopes=[FCM_SCOPE],
                )
            if self._project_id is None:
                self._project_id = self._credentials.project_id
                if not self._project_id:
                    raise ValueError(
                        f"{self._service_account_file} names no project_id; pass project_id"
                    )
            self._path = (
                f"{self._base_path}/v1/projects/{self._project_id}/messages:send".encode())
            if self._session is None:
                # google-auth's token requests only (rare): aiohttp is fine there
                tls = ssl.create_default_context(cafile=self._ca_file)   # no ALPN h2 here
                self._session = aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                    connector=aiohttp.TCPConnector(ssl=tls))
            return self._session

    async def _access_token(self, *, stale: str | None = None) -> str:
        token = self._token
        # A token other than the one that just got a 401 means another sender refreshed.
        if (
            token is not None
            and token != stale
            and time.time() < self._token_expires_at - REFRESH_MARGIN_S
        ):
            return token
        task = self._refresh_task
        if task is None or task.done():
            task = asyncio.ensure_future(self._refresh())
            task.add_done_callback(_consume_exception)
            self._refresh_task = task
        # shield: a cancelled sender must not cancel the refresh others are awaiting
        return await asyncio.shield(task)

    async def _refresh(self) -> str:
        session = await self._ready()
        request = _LoopRequest(asyncio.get_running_loop(), session, self._timeout_s)
        credentials = self._credentials
        try:
            await asyncio.to_thread(credentials.refresh, request)
        except google.auth.exceptions.TransportError as e:
            raise FcmTransportError(f"FCM token endpoint unreachable: {e}") from e
        except google.auth.exceptions.RefreshError as e:
            if getattr(e, "retryable", False):
                raise FcmTransportError(f"FCM token endpoint failed: {e}") from e
            raise FcmAuthError(f"FCM token grant refused: {e}") from e
        token = credentials.token
        if not isinstance(token, str) or not token:
            raise FcmAuthError("the token endpoint returned no access token")
        expiry = credentials.expiry
        if isinstance(expiry, dt.datetime):
            if expiry.tzinfo is None:  # google-auth uses naive UTC
                expiry = expiry.replace(tzinfo=dt.UTC)
            expires_at = expiry.timestamp()
        else:
            expires_at = time.time() + 3600
        self._token, self._token_expires_at = token, expires_at
        self.token_refreshes += 1
        logger.debug("FCM access token refreshed, valid for %.0f s", expires_at - time.time())
        return token

    def _headers(self, token: str) -> tuple[tuple[bytes, bytes], ...]:
        """The request's headers: the same for every message until the token changes,
        so all of them HPACK indexes after the first."""
        if token != self._fields_token:
            self._fields = (
                (b"content-type", b"application/json; charset=UTF-8"),
                (b"user-agent", b"geopush"),
                (b"authorization", f"Bearer {token}".encode()),
            )
            self._fields_token = token
        return self._fields


def _fcm_response(answer: Response) -> FcmResponse:
    # A success's headers are not read (nor decoded: http2.Response).
    retry_after = None if answer.status == 200 else answer.headers.get(b"retry-after")
    return parse_response(answer.status, answer.body,
                          None if retry_after is None else retry_after.decode("latin-1"))


def _transport_failure(error: BaseException, timeout_s: float) -> Exception:
    """Why a ``messages:send`` request got no answer, as FcmTransportError (retryable),
    or the error itself when it is not the transport's (FcmAuthError, a closed client)."""
    if isinstance(error, TimeoutError):
        return FcmTransportError(f"no FCM response within {timeout_s} s")
    if isinstance(error, StreamError | OSError):
        return FcmTransportError(f"FCM request failed: {error!r}")
    return error if isinstance(error, Exception) else FcmTransportError(repr(error))
