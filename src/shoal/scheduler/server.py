"""The scheduler's HTTP server: the API of ``shoal.p2p.protocol`` over :class:`SchedulerState`.

Handlers parse, call one synchronous state method, and render: the event loop is the single
owner of the state (no state method awaits, so each call is atomic). The hashes long-poll
waits on one ``asyncio.Event`` per task, set when new hashes arrive; the long-polls it wakes
get the state's shared answer, rendered once for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import functools
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shoal import __version__
from shoal.core.digest import Digest, DigestError
from shoal.p2p import protocol
from shoal.p2p.presence import AGENT_TTL
from shoal.p2p.protocol import JoinRequest, Report, dumps, loads
from shoal.p2p.tls import PeerIdentity
from shoal.scheduler.agents import AgentDirectory
from shoal.scheduler.ca import CaSource
from shoal.scheduler.config import SchedulerConfig, certificate_ips, require_peer_auth, split_hostport
from shoal.scheduler.enrollment import ClusterProof, Enrollment
from shoal.scheduler.issuance import Reserved
from shoal.scheduler.kube import ClusterFacts
from shoal.scheduler.metrics import SchedulerMetrics
from shoal.scheduler.peer_ids import PeerIds
from shoal.scheduler.requests import BadRequest, parse_hashes_query, parse_join, parse_leave, parse_report
from shoal.scheduler.state import (
    SHARED_RUN,
    ConflictError,
    FullError,
    SchedulerState,
    StateError,
    UnknownTaskError,
)
from shoal.scheduler.tls import ServerTls, refuse_if_foreign, request_identity

log = logging.getLogger(__name__)
RENDERED = 256
"""hashes answers kept rendered (each at most ``SHARED_RUN`` hashes: about 5 KiB of JSON)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Clock = Callable[[], float]
_Zoned = TypeVar("_Zoned", JoinRequest, Report)


class _Waiters:
    """One event per task with hashes long-polls waiting on it."""

    def __init__(self) -> None:
        self.events: dict[str, tuple[asyncio.Event, int]] = {}

    @contextlib.contextmanager
    def watch(self, digest: str) -> Iterator[asyncio.Event]:
        event, count = self.events.get(digest, (asyncio.Event(), 0))
        self.events[digest] = (event, count + 1)
        try:
            yield event
        finally:
            current = self.events.get(digest)
            if current is not None and current[0] is event:
                if current[1] <= 1:
                    del self.events[digest]
                else:
                    self.events[digest] = (event, current[1] - 1)

    def wake(self, digest: str) -> None:
        entry = self.events.pop(digest, None)
        if entry is not None:
            entry[0].set()

    def wake_all(self) -> None:
        for digest in list(self.events):
            self.wake(digest)


class Scheduler:
    """One scheduler. ``url = await scheduler.start()``; ``await scheduler.stop()``.

    Parameters:
        config: what to listen on, the peer token, TLS, lease and policy settings. Without a
            peer token it must say ``insecure_no_peer_auth`` (else ``ConfigError``).
        clock: seconds on a monotonic clock (tests pass a fake).
        cluster: the Kubernetes API enrollment checks tokens with (tests pass a fake); by
            default the real one when ``config.agent_service_account`` is set.

    With ``config.tls_ca_dir`` the API is served over TLS 1.3 only, and the task API and
    announcements need a node certificate: a caller acts only as the node it names.
    """

    def __init__(
        self, config: SchedulerConfig, clock: Clock = time.monotonic, cluster: ClusterFacts | None = None
    ) -> None:
        require_peer_auth(config)
        self.config = config
        self.clock = clock
        self.state = SchedulerState(config)
        self.metrics = SchedulerMetrics(self.state)
        self.tls: ServerTls | None = None
        self.enrollment: Enrollment | None = None
        if config.tls_ca_dir is not None:
            ca = CaSource(config.tls_ca_dir)
            ttl = datetime.timedelta(seconds=config.cert_ttl)
            ips = certificate_ips(config)
            self.tls = ServerTls(ca, config.tls_names, ips, ttl)
            proof = None
            if config.agent_service_account is not None:
                if cluster is None:
                    from shoal.scheduler.kube import KubernetesFacts

                    cluster = KubernetesFacts(config.kubeconfig)
                proof = ClusterProof(cluster, config.token_audience, config.agent_service_account)
            reserved = Reserved(config.tls_names, ips)
            self.enrollment = Enrollment(ca, ttl, reserved, cluster=proof, peer_token=config.peer_token)
        self.peer_ids = PeerIds(ttl=max(config.peer_ttl, AGENT_TTL), clock=clock)
        self.agents = AgentDirectory(clock=clock, node_certificates=self.tls is not None, peer_ids=self.peer_ids)
        self.agents.add_metrics(self.metrics.registry)
        self._waiters = _Waiters()
        self._rendered: dict[tuple[str, int], tuple[protocol.HashesView, bytes]] = {}
        self._bearer = f"Bearer {config.peer_token}".encode() if config.peer_token is not None else None
        self._runner: web.AppRunner | None = None
        self._janitor: asyncio.Task[None] | None = None
        self._closing = False
        self.url = ""

    async def start(self) -> str:
        self._closing = False
        self._runner = web.AppRunner(self.build_app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        host, port = split_hostport(self.config.listen)
        ssl_context = self.tls.context if self.tls is not None else None
        site = web.TCPSite(self._runner, host, port, backlog=1024, reuse_address=True, ssl_context=ssl_context)
        await site.start()
        bound = self._runner.addresses[-1]  # (host, port, ...) of the socket just bound; works under uvloop too
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if self.tls else 'http'}://{shown}:{bound[1]}"
        self._janitor = asyncio.create_task(self._expire_periodically(), name="scheduler expiry")
        log.info("shoal scheduler %s listening on %s (policy %s)", __version__, self.url, self.config.parent_policy)
        if self.tls is None:
            log.warning(
                "INSECURE: no TLS: every call to %s, and the peer token it carries, crosses the network "
                "in clear; anyone who captures one can act as any node. Labs only.",
                self.url,
            )
        if self.config.insecure_no_peer_auth:
            log.warning(
                "INSECURE: --insecure-no-peer-auth: the scheduler API is open to anyone who reaches %s; "
                "any of them can steer every pull (parents, origin leases, piece hashes). Labs only.",
                self.url,
            )
        return self.url

    async def stop(self) -> None:
        self._closing = True
        self._waiters.wake_all()
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
            self._janitor = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.tls is not None:
            self.tls.close()

    async def _expire_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.config.expire_interval)
            self.state.expire(self.clock())
            if self.tls is not None:
                try:
                    if self.tls.renew_if_due():
                        log.info("renewed the scheduler's certificate (valid until %s)", self.tls.renew_at)
                except (OSError, ValueError) as exc:  # a broken CA replacement: keep the current one
                    log.error("cannot renew the scheduler's certificate: %s", exc)

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        node, read = functools.partial(self._api, node=True), functools.partial(self._api, node=False)
        # dynamic routes are tried in the order added: the most frequent call first
        app.router.add_post("/v1/tasks/{digest}/report", node(self._report))
        app.router.add_post("/v1/tasks/{digest}/join", node(self._join))
        app.router.add_get("/v1/tasks/{digest}/hashes", node(self._hashes))
        app.router.add_post("/v1/tasks/{digest}/leave", node(self._leave))
        app.router.add_get("/v1/stats", read(self._stats))
        self.agents.add_routes(app, post_guard=node, get_guard=read)
        if self.enrollment is not None:
            self.enrollment.add_routes(app)
        return app

    def _api(self, handler: Handler, node: bool) -> Handler:
        """``handler`` behind the caller's credential, with state errors rendered as 4xx/503.

        With TLS, ``node`` routes need a node certificate (the handler checks the request
        names that node); the others also take the peer token (the CLI's read-only calls).
        Without TLS every route takes the peer token. A wrapper per route rather than an
        aiohttp middleware: with any middleware aiohttp runs two more coroutines per request,
        on every call."""

        @functools.wraps(handler)
        async def api(request: web.Request) -> web.StreamResponse:
            self._authenticate(request, node)
            started = time.monotonic()
            try:
                response = await handler(request)
            except BadRequest as exc:
                raise web.HTTPBadRequest(text=f"{exc}\n") from None
            except UnknownTaskError as exc:
                raise web.HTTPNotFound(text=f"{exc}\n") from None
            except ConflictError as exc:
                raise web.HTTPConflict(text=f"{exc}\n") from None
            except FullError as exc:
                raise web.HTTPServiceUnavailable(text=f"{exc}\n", headers={protocol.FULL_HEADER: "1"}) from None
            except StateError as exc:
                raise web.HTTPBadRequest(text=f"{exc}\n") from None
            if request.method == "POST":
                self.metrics.request_seconds.observe(time.monotonic() - started)
            return response

        return api

    def _authenticate(self, request: web.Request, node: bool) -> None:
        if self.tls is None:
            self._check_token(request)
            return
        if request_identity(request.transport) is not None:
            return
        if node:
            raise web.HTTPUnauthorized(text="a node certificate is required (enroll first)\n")
        self._check_token(request)

    def _check_token(self, request: web.Request) -> None:
        if self._bearer is None:
            assert self.config.insecure_no_peer_auth  # require_peer_auth
            return
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), self._bearer):
            raise web.HTTPUnauthorized(text="peer token required\n", headers={"WWW-Authenticate": "Bearer"})

    @staticmethod
    def _digest(text: str) -> str:
        try:
            Digest.parse(text)
        except DigestError as exc:
            raise BadRequest(str(exc)) from None
        return text  # parse accepts only the canonical spelling

    @staticmethod
    def _body(body: bytes) -> Any:
        try:
            return loads(body)
        except ValueError as exc:  # bad JSON, bad UTF-8, a 5000-digit number, nesting past 1024
            raise BadRequest(f"body: want JSON ({str(exc)[:200]})") from None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": __version__})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _join(self, request: web.Request) -> web.Response:
        identity = request_identity(request.transport)
        return _json(self.answer_join(request.match_info["digest"], await request.read(), identity))

    async def _report(self, request: web.Request) -> web.Response:
        identity = request_identity(request.transport)
        return _json(self.answer_report(request.match_info["digest"], await request.read(), identity))

    def _as_caller(self, identity: PeerIdentity | None, peer_id: str, address: str | None) -> None:
        if identity is not None:
            refuse_if_foreign(identity, peer_id, address, peer_ids=self.peer_ids)

    @staticmethod
    def _certified_zone(request: _Zoned, identity: PeerIdentity | None) -> _Zoned:
        """A caller with a node certificate is in the zone the certificate names, whatever it
        announces ("" when it names none: in every zone, never another zone's gateway): the
        scheduler read it from the caller's Node, so a node cannot pose as another zone's."""
        if identity is None or identity.zone == request.zone:
            return request
        return dataclasses.replace(request, zone=identity.zone)

    def answer_join(self, digest: str, body: bytes, identity: PeerIdentity | None = None) -> bytes:
        """The whole work of ``POST /v1/tasks/{digest}/join`` but HTTP: the answer's JSON, or
        the exceptions :meth:`_api` renders. ``identity``: the caller's node certificate,
        which must name the peer joining."""
        digest = self._digest(digest)
        request = parse_join(self._body(body))
        self._as_caller(identity, request.peer_id, request.address)
        request = self._certified_zone(request, identity)
        view = self.state.join(digest, request, self.clock())
        self._log_state_events()
        self.metrics.parents_per_join.observe(len(view.parents))
        return dumps(view)

    def answer_report(self, digest: str, body: bytes, identity: PeerIdentity | None = None) -> bytes:
        """The whole work of ``POST /v1/tasks/{digest}/report`` but HTTP (see :meth:`answer_join`)."""
        digest = self._digest(digest)
        rep = parse_report(self._body(body))
        self._as_caller(identity, rep.peer_id, rep.address)
        rep = self._certified_zone(rep, identity)
        known = self._known(digest)
        view = self.state.report(digest, rep, self.clock())
        if view.hashes_known != known:
            self._waiters.wake(digest)
        self._log_state_events()
        return dumps(view)

    def _log_state_events(self) -> None:
        for move in self.state.lease_moves:
            self.metrics.lease_moves.labels(move.reason.split(" for ")[0]).inc()
            log.warning(
                "origin lease of %s moved from %s to %s: %s", move.digest, move.old_holder, move.new_holder, move.reason
            )
        self.state.lease_moves.clear()
        for reset in self.state.resets:
            log.warning(
                "piece hashes of %s dropped: %s's blob matched them but not its digest; published by %s",
                reset.digest,
                reset.reporter,
                ", ".join(reset.blamed),
            )
        self.state.resets.clear()

    def _known(self, digest: str) -> int:
        task = self.state.tasks.get(digest)
        return task.hashes_known if task is not None else 0

    async def _hashes(self, request: web.Request) -> web.Response:
        digest = self._digest(request.match_info["digest"])
        start, wait = parse_hashes_query(request.query, self.config.max_wait)
        view = self.state.hashes(digest, start)
        deadline = time.monotonic() + wait
        while not view.hashes and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with self._waiters.watch(digest) as event, contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)
            view = self.state.hashes(digest, start)
        return _json(self.render_hashes(digest, view))

    def render_hashes(self, digest: str, view: protocol.HashesView) -> bytes:
        """The JSON of ``view``, rendered once for every long-poll the state hands the same answer
        (a new hash wakes every peer waiting on the blob, nearly all asking from one start)."""
        key = (digest, view.start)
        kept = self._rendered.get(key)
        if kept is not None and kept[0] is view:
            return kept[1]
        body = dumps(view)
        if len(view.hashes) <= SHARED_RUN:
            if len(self._rendered) >= RENDERED:
                self._rendered.clear()
            self._rendered[key] = (view, body)
        return body

    async def _leave(self, request: web.Request) -> web.Response:
        digest = self._digest(request.match_info["digest"])
        peer_id = parse_leave(self._body(await request.read()))
        self._as_caller(request_identity(request.transport), peer_id, None)
        self.state.leave(digest, peer_id)
        return _json(b"{}")

    async def _stats(self, request: web.Request) -> web.Response:
        return _json(dumps(self.state.stats()))


def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json", charset="utf-8")
