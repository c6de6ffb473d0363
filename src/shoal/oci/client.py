"""A client for one upstream OCI registry: requests with the client's own credentials.

Runs the registry's auth flow on a 401 (Bearer token from the realm, or Basic), caches
tokens per credential and scope, and follows redirects to object storage *without* the
``Authorization`` header. Errors come out as the small ``Upstream*`` hierarchy.

How long a request waits for its answer is ``registry_wait``'s: the short bound only when the
caller can serve something held instead (``held_instead``, or ``fallback=``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import http.client
import logging
import socket
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from typing import Any, Protocol

import aiohttp
from yarl import URL

from shoal.oci import blocking
from shoal.oci.auth import Credentials, TokenCache, fingerprint, parse_challenge, pull_scope
from shoal.oci.blocking import BlockingResponse, Interrupt, run_in_thread
from shoal.oci.registry_wait import ANSWER_TIMEOUT, RegistryWait, Step, WaitLimits

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class UpstreamError(Exception):
    """The upstream registry did not give us what we asked for."""


class UpstreamUnauthorized(UpstreamError):
    """The registry wants credentials the client did not give, or refused the ones it gave."""


class UpstreamDenied(UpstreamError):
    """The registry understood the credentials and refused access (403)."""


class UpstreamUnavailable(UpstreamError):
    """The registry could not be reached, timed out or answered 5xx (or 429).

    ``cause`` is a short phrase a person can read ("connection refused", "no answer within
    5s", "answered 503"), never an exception's repr: it ends up in the client's error body."""

    def __init__(self, message: str, *, registry: str = "", cause: str = "") -> None:
        super().__init__(message)
        self.registry = registry
        self.cause = cause or message


class Breaker(Protocol):
    """What a registry client tells its registry's circuit breaker (``shoal.agent.outage``)."""

    def marked_hung(self) -> str | None:
        """None unless a request to the registry waited out its bound: then why it is marked down."""

    def answered(self) -> None:
        """The registry answered (any status below 500 but 429)."""

    def failed(self, cause: str, *, hung: bool = False) -> None:
        """The registry could not answer: refused, reset, DNS, TLS, timeout, 5xx, 429
        (``hung``: a timeout, the request waited the whole time)."""


class UpstreamStatus(UpstreamError):
    """Any other non-success answer (404 and friends), kept to pass through to the client."""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.body = body
        self.content_type = content_type


LatencyObserver = Callable[[str, float], None]

Fallback = Callable[[], Awaitable[bool]]
"""True when something held can be served (to this client) instead of the registry's answer"""

_FALLBACK: contextvars.ContextVar[Fallback | None] = contextvars.ContextVar("shoal_held_fallback", default=None)


@contextlib.contextmanager
def held_instead(fallback: Fallback) -> Iterator[None]:
    """Registry requests made in this block (and tasks it starts) may stop waiting after the
    short bound when ``fallback`` says something held can answer instead."""
    token = _FALLBACK.set(fallback)
    try:
        yield
    finally:
        _FALLBACK.reset(token)


class RegistryClient:
    """Talks to one registry (``name`` as written in image references) at ``base_url``."""

    def __init__(
        self,
        name: str,
        base_url: str,
        session: aiohttp.ClientSession,
        tokens: TokenCache,
        observe: LatencyObserver | None = None,
        *,
        header_timeout: float | None = None,
        breaker: Breaker | None = None,
        answer_timeout: float = ANSWER_TIMEOUT,
    ) -> None:
        """``header_timeout``: seconds a request waits for its answer when something held can
        be served instead (a hung registry costs at most that); ``answer_timeout``: when
        nothing can; ``breaker``: told of every answer and failure, and asked before each
        request."""
        self.name = name
        self.header_timeout = header_timeout
        self.answer_timeout = answer_timeout
        self.breaker = breaker
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._tokens = tokens
        self._observe = observe
        self._token_locks: dict[tuple[str, str, str, str], asyncio.Lock] = {}
        self._tls: ssl.SSLContext | None = None

    async def open(
        self,
        method: str,
        path: str,
        *,
        repository: str,
        creds: Credentials | None,
        headers: Mapping[str, str] | None = None,
        kind: str = "other",
        fallback: Fallback | None = None,
    ) -> aiohttp.ClientResponse:
        """Send a request and return the (successful or 404-ish) response, unread.

        The caller must release the response. 2xx and 206 are returned; 401/403/5xx and
        connection errors raise; other statuses raise UpstreamStatus with the body.
        ``fallback`` (default: the one ``held_instead`` set) lets the wait be short.
        """
        request = functools.partial(self._open_now, method, path, repository, creds, headers, kind)
        return await self._wait_for(request, fallback, aiohttp.ClientResponse.release)

    async def _open_now(
        self,
        method: str,
        path: str,
        repository: str,
        creds: Credentials | None,
        headers: Mapping[str, str] | None,
        kind: str,
    ) -> aiohttp.ClientResponse:
        url = f"{self.base_url}{path}"
        scope = pull_scope(repository)
        fp = fingerprint(creds)
        auth_key = (fp, self.name, scope, "auth")
        auth = self._tokens.get(auth_key)
        started = time.monotonic()
        for attempt in range(2):
            req_headers = dict(headers or {})
            if auth is not None:
                req_headers["Authorization"] = auth
            resp = await self._send(method, url, req_headers)
            if resp.status != 401:
                break
            challenge = resp.headers.get("WWW-Authenticate", "")
            resp.release()
            auth = await self._answer(challenge, attempt, repository, creds, scope, auth_key)
        resp = await self._follow_redirects(method, resp, headers)
        if self._observe is not None:
            self._observe(kind, time.monotonic() - started)
        if resp.status < 300:
            return resp
        body = await _read_small(resp)
        status = resp.status
        content_type = resp.headers.get("Content-Type", "application/json")
        resp.release()
        raise self._status_error(status, body, content_type, repository, path)

    async def open_in_thread(
        self,
        path: str,
        *,
        repository: str,
        creds: Credentials | None,
        headers: Mapping[str, str] | None = None,
        kind: str = "other",
        interrupt: Interrupt,
        fallback: Fallback | None = None,
    ) -> BlockingResponse:
        """``open`` for a GET whose body a worker thread will read (``blocking``): the same
        auth flow, redirects, errors and wait, each blocking step in a thread of its own,
        stopped by ``interrupt`` when the caller is cancelled. The caller must close the
        response."""
        request = functools.partial(self._open_in_thread_now, path, repository, creds, headers, kind, interrupt)
        return await self._wait_for(request, fallback, BlockingResponse.close)

    async def _open_in_thread_now(
        self,
        path: str,
        repository: str,
        creds: Credentials | None,
        headers: Mapping[str, str] | None,
        kind: str,
        interrupt: Interrupt,
    ) -> BlockingResponse:
        url = f"{self.base_url}{path}"
        scope = pull_scope(repository)
        auth_key = (fingerprint(creds), self.name, scope, "auth")
        auth = self._tokens.get(auth_key)
        started = time.monotonic()
        for attempt in range(2):
            req_headers = dict(headers or {})
            if auth is not None:
                req_headers["Authorization"] = auth
            resp = await self._send_in_thread(url, req_headers, interrupt)
            if resp.status != 401:
                break
            challenge = resp.headers.get("WWW-Authenticate", "")
            resp.close()
            auth = await self._answer(challenge, attempt, repository, creds, scope, auth_key)
        for _ in range(MAX_REDIRECTS):
            location = resp.headers.get("Location")
            if resp.status not in REDIRECT_STATUSES or location is None:
                break
            resp.close()
            target = urllib.parse.urljoin(resp.url, location)
            resp = await self._send_in_thread(target, redirect_headers(headers), interrupt)
        else:
            resp.close()
            raise UpstreamUnavailable(
                f"{self.name}: too many redirects", registry=self.name, cause="too many redirects"
            )
        if self._observe is not None:
            self._observe(kind, time.monotonic() - started)
        if resp.status < 300:
            return resp
        body = await run_in_thread(resp.read_small, interrupt)
        status = resp.status
        content_type = resp.headers.get("Content-Type", "application/json")
        resp.close()
        raise self._status_error(status, body, content_type, repository, path)

    async def _wait_for[T](
        self, request: Callable[[], Coroutine[Any, Any, T]], fallback: Fallback | None, release: Callable[[T], object]
    ) -> T:
        """Run ``request`` (the whole exchange up to the response headers) as ``RegistryWait``
        says: the short bound only when something held can answer instead, one request only."""
        fallback = fallback or _FALLBACK.get()
        hung = None if self.breaker is None else self.breaker.marked_hung()
        wait = RegistryWait(
            WaitLimits(self.header_timeout, self.answer_timeout), hung is not None, asyncio.get_running_loop().time
        )
        task: asyncio.Task[T] | None = None
        taken = False
        try:
            while True:
                step, seconds = wait.next()
                if step is Step.SEND:
                    task = asyncio.create_task(request(), name=f"registry {self.name}")
                    wait.sent()
                elif step is Step.ASK_HELD:
                    wait.learnt(fallback is not None and await fallback())
                    if task is not None and task.done():  # it answered meanwhile: a real answer wins
                        taken = True
                        return task.result()
                elif step is Step.WAIT:
                    assert task is not None
                    done, _ = await asyncio.wait({task}, timeout=seconds)
                    if done:
                        taken = True
                        return task.result()
                else:
                    raise self._gave_up(step, hung, sent=wait.sent_at is not None)
        finally:
            if task is not None and not taken:
                task.cancel()
                (result,) = await asyncio.gather(task, return_exceptions=True)
                if not isinstance(result, BaseException):
                    release(result)

    def _gave_up(self, step: Step, hung: str | None, *, sent: bool) -> UpstreamUnavailable:
        """Stopped waiting: marked hung already (nothing sent), or no answer within a bound."""
        if not sent and hung is not None:
            return UpstreamUnavailable(f"{self.name} {hung}", registry=self.name, cause=hung)
        bound = self.header_timeout if step is Step.SERVE_HELD else self.answer_timeout
        cause = f"no answer within {bound:g}s"
        if self.breaker is not None:
            self.breaker.failed(cause, hung=True)
        return UpstreamUnavailable(f"cannot reach {self.name}: {cause}", registry=self.name, cause=cause)

    async def _send_in_thread(self, url: str, headers: dict[str, str], interrupt: Interrupt) -> BlockingResponse:
        timeout = self._session.timeout
        send = functools.partial(
            blocking.request,
            "GET",
            url,
            headers,
            interrupt=interrupt,
            connect_timeout=timeout.connect or timeout.total or 60.0,
            read_timeout=timeout.sock_read or timeout.total or 300.0,
            tls=self._tls_context,
        )
        try:
            resp = await run_in_thread(send, interrupt, name=f"shoal-get {self.name}")
        except (*blocking.NETWORK_ERRORS, TimeoutError) as exc:
            raise self._unreachable(url, exc) from exc
        self._heard(resp.status)
        return resp

    def _tls_context(self) -> ssl.SSLContext:
        """Verified TLS as aiohttp's default (built in the worker thread: loading the CA
        bundle is blocking I/O)."""
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    async def _answer(
        self,
        challenge_header: str,
        attempt: int,
        repository: str,
        creds: Credentials | None,
        scope: str,
        auth_key: tuple[str, str, str, str],
    ) -> str:
        """The Authorization value that answers a 401's challenge (raises if none will)."""
        challenge = parse_challenge(challenge_header)
        if attempt == 1 or challenge is None:
            raise UpstreamUnauthorized(f"{self.name} refused the credentials for {repository}")
        if challenge.scheme == "bearer":
            return await self._bearer(challenge.params, creds, scope, auth_key)
        if challenge.scheme == "basic" and creds is not None:
            auth = creds.basic_header()
            self._tokens.put(auth_key, auth, 3600.0)
            return auth
        raise UpstreamUnauthorized(f"{self.name} requires credentials for {repository}")

    def _status_error(self, status: int, body: bytes, content_type: str, repository: str, path: str) -> UpstreamError:
        if status == 401:
            return UpstreamUnauthorized(f"{self.name} refused the credentials for {repository}")
        if status == 403:
            return UpstreamDenied(f"{self.name} denied access to {repository}")
        if status == 429 or status >= 500:
            cause = f"answered {status}"
            return UpstreamUnavailable(f"{self.name} {cause} for {path}", registry=self.name, cause=cause)
        return UpstreamStatus(status, body, content_type)

    async def _send(self, method: str, url: str, headers: dict[str, str]) -> aiohttp.ClientResponse:
        try:
            resp = await self._session.request(method, url, headers=headers, allow_redirects=False)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise self._unreachable(url, exc) from exc
        self._heard(resp.status)
        return resp

    async def probe(self) -> None:
        """Ask ``/v2/`` whether the registry answers at all (any status but 5xx and 429 is an
        answer), telling the breaker; past the breaker's refusal, it is the breaker's probe."""
        url = f"{self.base_url}/v2/"
        try:
            async with asyncio.timeout(self.header_timeout):
                resp = await self._session.get(url, allow_redirects=False)
            resp.release()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            cause = describe_failure(exc, self.header_timeout)
            if self.breaker is not None:
                self.breaker.failed(cause, hung=isinstance(exc, TimeoutError))
            return
        self._heard(resp.status)

    def _heard(self, status: int) -> None:
        if self.breaker is None:
            return
        if status == 429 or status >= 500:
            self.breaker.failed(f"answered {status}")
        else:
            self.breaker.answered()

    def _unreachable(self, url: str, exc: BaseException) -> UpstreamUnavailable:
        cause = describe_failure(exc, None)
        if self.breaker is not None:
            self.breaker.failed(cause, hung=isinstance(exc, TimeoutError))
        log.debug("%s at %s: %r", self.name, url, exc)
        return UpstreamUnavailable(f"cannot reach {self.name}: {cause}", registry=self.name, cause=cause)

    async def _follow_redirects(
        self, method: str, resp: aiohttp.ClientResponse, headers: Mapping[str, str] | None
    ) -> aiohttp.ClientResponse:
        for _ in range(MAX_REDIRECTS):
            if resp.status not in REDIRECT_STATUSES or "Location" not in resp.headers:
                return resp
            target = resp.url.join(URL(resp.headers["Location"]))
            resp.release()
            resp = await self._send(method, str(target), redirect_headers(headers))
        raise UpstreamUnavailable(f"{self.name}: too many redirects", registry=self.name, cause="too many redirects")

    async def _bearer(
        self,
        params: Mapping[str, str],
        creds: Credentials | None,
        scope: str,
        auth_key: tuple[str, str, str, str],
    ) -> str:
        lock = self._token_locks.setdefault(auth_key, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(auth_key)
            if cached is not None:
                return cached
            realm = params.get("realm", "")
            if not realm.startswith(("http://", "https://")):
                raise UpstreamUnavailable(f"{self.name} sent a bad token realm {realm!r}")
            query = {"scope": params.get("scope", scope)}
            if "service" in params:
                query["service"] = params["service"]
            headers = {} if creds is None else {"Authorization": creds.basic_header()}
            try:
                async with self._session.get(realm, params=query, headers=headers) as resp:
                    if resp.status in (401, 403):
                        raise UpstreamUnauthorized(f"{self.name} token service refused the credentials")
                    if resp.status != 200:
                        cause = f"token service answered {resp.status}"
                        raise UpstreamUnavailable(f"{self.name} {cause}", registry=self.name, cause=cause)
                    body: Any = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                cause = f"token service: {describe_failure(exc, None)}"
                if self.breaker is not None and not isinstance(exc, ValueError):
                    self.breaker.failed(cause, hung=isinstance(exc, TimeoutError))
                raise UpstreamUnavailable(f"{self.name} {cause}", registry=self.name, cause=cause) from exc
            token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
            if not isinstance(token, str) or not token:
                raise UpstreamUnavailable(f"{self.name} token service sent no token")
            expires_in = body.get("expires_in", 60)
            expires = float(expires_in) if isinstance(expires_in, int | float) else 60.0
            value = f"Bearer {token}"
            self._tokens.put(auth_key, value, expires)
            self._token_locks.pop(auth_key, None)
            return value


def describe_failure(exc: BaseException, header_timeout: float | None) -> str:
    """A network failure as a short phrase for people: what happened, never a repr."""
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return f"no answer within {header_timeout:g}s" if header_timeout else "timed out"
    if isinstance(exc, aiohttp.ClientConnectorDNSError | socket.gaierror):
        return "DNS lookup failed"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | ssl.SSLCertVerificationError):
        return "TLS certificate not trusted"
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return "TLS handshake failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        exc = exc.os_error
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError | aiohttp.ServerDisconnectedError | http.client.RemoteDisconnected):
        return "connection reset"
    if isinstance(exc, aiohttp.ClientPayloadError | http.client.HTTPException | aiohttp.ClientResponseError):
        return "broken answer"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return "connection failed"


async def _read_small(resp: aiohttp.ClientResponse, limit: int = 64 << 10) -> bytes:
    try:
        return await resp.content.read(limit)
    except (aiohttp.ClientError, TimeoutError):
        return b""


def redirect_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """What follows a redirect to object storage: its URL carries its own signature, so never
    our credentials; a ``Range`` does, or the storage sends the whole blob again."""
    return {k: v for k, v in (headers or {}).items() if k.lower() == "range"}


def new_session(*, connect_timeout: float = 10.0, read_timeout: float = 60.0) -> aiohttp.ClientSession:
    """One session for every upstream: no decompression, big read buffers, no total timeout."""
    return aiohttp.ClientSession(
        headers={"User-Agent": blocking.USER_AGENT},
        timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout),
        auto_decompress=False,
        read_bufsize=4 << 20,
        connector=aiohttp.TCPConnector(limit=256, limit_per_host=64, ttl_dns_cache=60),
    )
