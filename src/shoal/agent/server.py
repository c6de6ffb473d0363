"""The agent's HTTP server: routes, error rendering, request metrics, start and stop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shoal import __version__
from shoal.agent.access import AccessCache
from shoal.agent.blobs import BlobService, BlobSource
from shoal.agent.cluster_held import ClusterHeld
from shoal.agent.config import AgentConfig, split_hostport
from shoal.agent.connections import ConnectionGuard
from shoal.agent.enrollment import NodeEnrollment, node_enrollment, scheduler_tls
from shoal.agent.held_source import HeldSource
from shoal.agent.manifests import ManifestService
from shoal.agent.metrics import AgentMetrics
from shoal.agent.origin import OriginSource
from shoal.agent.outage import STALE_WARNING, RegistryBreaker, StaleMark, begin_request, image_name
from shoal.agent.peer_hub import PeerHub
from shoal.agent.peer_tls_setup import peer_wire_tls
from shoal.agent.preheat import Preheater
from shoal.agent.presence import Presence
from shoal.agent.stale_access import StaleAccess
from shoal.agent.swarm import SwarmSource
from shoal.agent.swarm_settings import swarm_configs
from shoal.agent.upstreams import Upstreams, challenge_error, map_upstream_error
from shoal.oci.auth import Credentials
from shoal.oci.client import UpstreamError, UpstreamUnavailable, describe_failure, new_session
from shoal.oci.distribution import DistributionPath, PathKind, parse_distribution_path
from shoal.oci.errors import DistributionError, ErrorCode
from shoal.p2p.enrollment import SchedulerTls
from shoal.p2p.node_https import NodeHttps
from shoal.p2p.ratelimit import TokenBucket
from shoal.p2p.scheduler_client import SchedulerClient
from shoal.store.blobstore import BlobStore
from shoal.store.containerd_content import ContainerdContent
from shoal.store.outage_ledger import Fingerprints, OutageLedger, node_key

log = logging.getLogger(__name__)

API_HEADERS = {"Docker-Distribution-API-Version": "registry/2.0"}
EVICTION_INTERVAL = 300.0
ROUTE = web.RequestKey("route", str)
DIST = web.RequestKey("dist", DistributionPath)
STALE = web.RequestKey("stale", StaleMark)
OUTAGE_PATH = "/p2p/v1/outage"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _is_down(breaker: RegistryBreaker) -> float:
    return float(breaker.down)


def _outages(breaker: RegistryBreaker) -> float:
    return float(breaker.outages)


class Agent:
    """One node's mirror. ``await agent.start()``; ``await agent.stop()``."""

    def __init__(self, config: AgentConfig, source: BlobSource | None = None) -> None:
        self.config = config
        self.metrics = AgentMetrics()
        self.store = BlobStore(config.cache_dir, ttl=config.cache_ttl, max_size=config.cache_max_size)
        self.store.on_evict = lambda reason: self.metrics.evictions.labels(reason).inc()
        self._source_override = source
        self._runner: web.AppRunner | None = None
        self._listener: socket.socket | None = None
        self.guard = ConnectionGuard(
            config.connection_limits, self.metrics.connections, self.metrics.connections_closed
        )
        self._session: aiohttp.ClientSession | None = None
        self._janitor: asyncio.Task[None] | None = None
        self.swarm: SwarmSource[PeerHub] | None = None
        self.scheduler_tls: SchedulerTls | None = None
        self.enrollment: NodeEnrollment | None = None
        self._prober: asyncio.Task[None] | None = None
        self.url = ""

    async def start(self) -> str:
        self.store.open()
        self.metrics.cache_bytes.set(self.store.total_size)
        self.metrics.cache_entries.set(self.store.count)
        self._session = new_session()
        self.scheduler_tls = scheduler_tls(self.config)
        self.enrollment = node_enrollment(self.config, self._session)
        if self.enrollment is not None:
            self.enrollment.start()
            await self.enrollment.first_certificate()
        self.stale = self._build_stale()
        self.upstreams = Upstreams(
            self.config.registries,
            self._session,
            self.metrics,
            AccessCache(ttl=self.config.auth_cache_ttl),
            self.stale,
            header_timeout=self.config.registry_timeout,
        )
        self.bucket = TokenBucket(self.config.ratelimit)
        origin = OriginSource(self.upstreams, self.store, self.metrics, self.bucket)
        source: BlobSource = origin
        if self._source_override is not None:
            source = self._source_override
        elif self.config.p2p_enabled:
            self.swarm = self._build_swarm(origin)
            source = self.swarm
        content = ContainerdContent(self.config.containerd_content_dir) if self.config.containerd_content_dir else None
        self.cluster: ClusterHeld | None = None
        self.https = NodeHttps(self.config.tls_dir) if self.config.tls_dir is not None else None
        if self.https is not None:
            self.guard.https = self.https.server_context
        if self.config.p2p_enabled:
            self.cluster = ClusterHeld(
                self._session,
                SchedulerClient(
                    self._session, list(self.config.schedulers), self.config.peer_token(), tls=self.scheduler_tls
                ),
                self.config.advertise_address,
                self.config.peer_token(),
                self.stale,
                self.store,
                content,
                https=self.https,
            )
        if self._source_override is None and (content is not None or self.cluster is not None):
            source = HeldSource(source, self.upstreams, self.store, content, self.cluster)
        self.blobs = BlobService(
            self.store, self.upstreams, source, self.metrics, origin=origin, send_timeout=self.config.send_timeout
        )
        if self.swarm is not None:
            self.swarm.hub.partials = self.blobs.partials
            self.guard.divert = self.swarm.hub.accept
        self.manifests = ManifestService(self.store, self.upstreams, self.metrics, self.cluster)
        self.presence = Presence(
            self.config,
            self.store,
            self._session,
            tls=self.scheduler_tls,
            ready=self.enrollment.enrolled if self.enrollment is not None else None,
        )
        app = self.build_app()
        limits = self.config.connection_limits
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=False, keepalive_timeout=limits.keepalive_timeout
        )
        await self._runner.setup()
        assert self._runner.server is not None
        host, port = split_hostport(self.config.listen, "listen")
        self._listener = socket.create_server((host, port), backlog=1024)
        self.guard.serve(self._listener, self._runner.server)
        bound = self._listener.getsockname()
        self.url = f"http://{host}:{bound[1]}"
        self._janitor = asyncio.create_task(self._evict_periodically())
        self._prober = asyncio.create_task(self._probe_hung_registries(), name="registry prober")
        self.presence.start()
        log.info(
            "shoal agent %s listening on %s, registries: %s",
            __version__,
            self.url,
            ", ".join(f"{k}={v}" for k, v in self.config.registries.items()),
        )
        return self.url

    def _build_stale(self) -> StaleAccess:
        """The registry's answers on disk next to the cache, and each registry's breaker."""
        breakers = {name: RegistryBreaker(name, self.config.outage_probe_interval) for name in self.config.registries}
        for name, breaker in breakers.items():
            self.metrics.registry_down.labels(name).set_function(functools.partial(_is_down, breaker))
            self.metrics.registry_outages.labels(name).set_function(functools.partial(_outages, breaker))
        token = self.config.peer_token()
        self.ledger = OutageLedger(self.config.cache_dir)
        fingerprints = Fingerprints(node_key(self.config.cache_dir), (token or "").encode())
        self.ledger.forget_before(time.time() - self.config.outage_grace)
        return StaleAccess(self.ledger, fingerprints, self.config.outage_grace, breakers, self.metrics)

    def _build_swarm(self, origin: OriginSource) -> SwarmSource[PeerHub]:
        assert self._session is not None
        token = self.config.peer_token()
        scheduler = SchedulerClient(
            self._session, list(self.config.schedulers), token, tls=self.scheduler_tls, zone=self.config.zone
        )
        for advice in self.config.swarm.advice():
            log.warning("%s", advice)
        config, hub_config = swarm_configs(
            self.config.swarm, self.config.advertise_address, token, peer_wire_tls(self.config)
        )
        hub = PeerHub(hub_config, self.store, {}, self.metrics, self.bucket)
        swarm = SwarmSource(config, origin, scheduler, self.upstreams, self.store, hub, self.bucket, self.metrics)
        swarm.start()
        return swarm

    async def stop(self) -> None:
        with contextlib.suppress(AttributeError):
            await self.presence.stop()
        if self.enrollment is not None:
            await self.enrollment.stop()
        await self.guard.stop()
        cluster: ClusterHeld | None = getattr(self, "cluster", None)  # None before start()
        if cluster is not None:
            await cluster.close()
        if self._listener is not None:
            self._listener.close()
        if self.swarm is not None:
            await self.swarm.close()
        for task in (self._janitor, self._prober):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._runner is not None:
            await self._runner.cleanup()
        with contextlib.suppress(AttributeError):
            await self.blobs.close()
        if self._session is not None:
            await self._session.close()
        with contextlib.suppress(AttributeError):
            self.ledger.close()

    async def _probe_hung_registries(self) -> None:
        """A registry marked down because it hung gets no requests; this asks it every
        ``outage_probe_interval`` whether it answers again (one probe at a time per registry)."""
        probes: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                await asyncio.sleep(min(0.25, self.config.outage_probe_interval))
                for name, breaker in self.stale.breakers.items():
                    running = probes.get(name)
                    if (running is None or running.done()) and breaker.probe_due():
                        probes[name] = asyncio.create_task(self.upstreams.client(name).probe(), name=f"probe {name}")
        finally:
            for task in probes.values():
                task.cancel()
            await asyncio.gather(*probes.values(), return_exceptions=True)

    async def _evict_periodically(self) -> None:
        while True:
            await asyncio.sleep(EVICTION_INTERVAL)
            self.store.evict_expired()
            self.ledger.forget_before(time.time() - self.config.outage_grace)
            self.metrics.cache_bytes.set(self.store.total_size)
            self.metrics.cache_entries.set(self.store.count)

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=1 << 20)
        app.on_response_prepare.append(self._mark_stale)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get(OUTAGE_PATH, self._outage)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_route("*", "/v2{tail:.*}", self._distribution)
        token = self.config.peer_token()
        if token is not None or self.config.insecure_no_peer_auth:
            Preheater(self.store, lambda: self.url, sorted(self.config.registries), token).add_routes(app)
        if token is None and self.config.insecure_no_peer_auth:
            log.warning(
                "INSECURE: peer authentication is off (--insecure-no-peer-auth): anyone who can reach %s "
                "can read every blob this agent holds. Use it only in a lab.",
                self.config.listen,
            )
        self.presence.add_routes(app)
        if self.cluster is not None:
            self.cluster.add_routes(app)
        return app

    @staticmethod
    async def _mark_stale(request: web.Request, response: web.StreamResponse) -> None:
        """Before the headers leave: a stale answer says so."""
        mark = request.get(STALE)
        if mark is not None and mark.reason is not None and response.status < 400:
            response.headers["Warning"] = STALE_WARNING

    async def _outage(self, request: web.Request) -> web.Response:
        """``shoal status``: the registries marked down, and the images served stale meanwhile."""
        now = time.monotonic()
        registries = {
            name: {
                "down": b.down,
                "down_for": None if b.down_since is None else round(now - b.down_since, 3),
                "cause": b.cause if b.down else None,
                "outages": b.outages,
            }
            for name, b in self.stale.breakers.items()
        }
        stale = [
            {
                "image": image_name(i.registry, i.repository, i.reference),
                "digest": i.digest,
                "count": i.count,
                "first": i.first,
                "last": i.last,
            }
            for i in self.stale.stale_images()
        ]
        return web.json_response({"grace": self.config.outage_grace, "registries": registries, "stale": stale})

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The one boundary where errors become responses: DistributionError as the OCI
        ``{"errors": [...]}`` body, an upstream failure mapped for the path asked for."""
        started = time.monotonic()
        status = 500
        request[STALE] = begin_request()
        self.guard.busy(request.protocol)
        try:
            try:
                response = await handler(request)
            except (UpstreamError, aiohttp.ClientError, TimeoutError) as exc:
                dist = request.get(DIST)
                if dist is None:
                    raise
                if not isinstance(exc, UpstreamError):  # the registry broke off while we read an answer
                    cause = describe_failure(exc, None)
                    exc = UpstreamUnavailable(
                        f"{dist.registry} broke off: {cause}", registry=dist.registry, cause=cause
                    )
                raise map_upstream_error(exc, dist) from None
            status = response.status
        except DistributionError as exc:
            status = exc.status
            response = web.Response(
                status=exc.status,
                body=exc.body(),
                content_type="application/json",
                headers={**exc.headers, **API_HEADERS},
            )
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            self.guard.idle(request.protocol)
            if request.path.startswith("/v2"):
                route = request.get(ROUTE, "other")
                self.metrics.requests.labels(route, request.method, str(status)).inc()
                self.metrics.request_seconds.labels(route).observe(time.monotonic() - started)
        return response

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": __version__})

    async def _metrics(self, request: web.Request) -> web.Response:
        self.metrics.cache_bytes.set(self.store.total_size)
        self.metrics.cache_entries.set(self.store.count)
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _distribution(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            # before parsing: a push's POST .../blobs/uploads/ is not a pull path at all
            raise DistributionError(
                ErrorCode.UNSUPPORTED,
                f"{request.method} is not supported: Shoal is a pull-only mirror; push to the registry itself",
                headers={"Allow": "GET, HEAD"},
            )
        raw_path = request.raw_path.split("?", 1)[0]
        ns = request.query.get("ns")
        dist = parse_distribution_path(raw_path, ns, self.upstreams.clients, self.config.aliases)
        request[ROUTE] = dist.route
        request[DIST] = dist
        try:
            creds = Credentials.from_header(request.headers.get("Authorization"))
        except ValueError as exc:
            raise challenge_error(dist.registry or "shoal", str(exc)) from None
        if dist.kind is PathKind.BASE:
            if request.headers.get("Authorization") is None and request.query.get("ns") is None:
                # Clients such as skopeo decide whether to send credentials from this ping.
                raise challenge_error("shoal", "send credentials if the registry needs them")
            return web.json_response({}, headers=API_HEADERS)
        if dist.kind is PathKind.BLOB:
            return await self.blobs.serve(request, dist, creds)
        if dist.kind is PathKind.MANIFEST:
            return await self.manifests.serve(request, dist, creds)
        return await self._tags(request, dist, creds)

    async def _tags(self, request: web.Request, dist: DistributionPath, creds: Credentials | None) -> web.Response:
        query = request.query_string
        path = f"/v2/{dist.repository}/tags/list" + (f"?{query}" if query and "ns=" not in query else "")
        resp = await self.upstreams.client(dist.registry).open(
            "GET", path, repository=dist.repository, creds=creds, kind="tags"
        )
        async with resp:
            body = await resp.content.read(4 << 20)
            ctype = resp.headers.get("Content-Type", "application/json")
        return web.Response(body=body, headers={"Content-Type": ctype, **API_HEADERS})
