"""The agent's HTTP server: routes, error rendering, request metrics, start and stop."""

from __future__ import annotations

import asyncio
import contextlib
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
from shoal.agent.config import AgentConfig, split_hostport
from shoal.agent.connections import ConnectionGuard
from shoal.agent.manifests import ManifestService
from shoal.agent.metrics import AgentMetrics
from shoal.agent.origin import OriginSource
from shoal.agent.peer_hub import PeerHub
from shoal.agent.preheat import Preheater
from shoal.agent.presence import Presence
from shoal.agent.swarm import SwarmSource
from shoal.agent.swarm_settings import swarm_configs
from shoal.agent.upstreams import Upstreams, challenge_error, map_upstream_error
from shoal.oci.auth import Credentials
from shoal.oci.client import UpstreamError, UpstreamUnavailable, new_session
from shoal.oci.distribution import DistributionPath, PathKind, parse_distribution_path
from shoal.oci.errors import DistributionError, ErrorCode
from shoal.p2p.ratelimit import TokenBucket
from shoal.p2p.scheduler_client import SchedulerClient
from shoal.store.blobstore import BlobStore

log = logging.getLogger(__name__)

API_HEADERS = {"Docker-Distribution-API-Version": "registry/2.0"}
EVICTION_INTERVAL = 300.0
ROUTE = web.RequestKey("route", str)
DIST = web.RequestKey("dist", DistributionPath)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
        self.swarm: SwarmSource | None = None
        self.url = ""

    async def start(self) -> str:
        self.store.open()
        self.metrics.cache_bytes.set(self.store.total_size)
        self.metrics.cache_entries.set(self.store.count)
        self._session = new_session()
        self.upstreams = Upstreams(
            self.config.registries, self._session, self.metrics, AccessCache(ttl=self.config.auth_cache_ttl)
        )
        self.bucket = TokenBucket(self.config.ratelimit)
        origin = OriginSource(self.upstreams, self.store, self.metrics, self.bucket)
        source: BlobSource = origin
        if self._source_override is not None:
            source = self._source_override
        elif self.config.p2p_enabled:
            self.swarm = self._build_swarm(origin)
            source = self.swarm
        self.blobs = BlobService(
            self.store, self.upstreams, source, self.metrics, origin=origin, send_timeout=self.config.send_timeout
        )
        if self.swarm is not None:
            self.swarm.hub.partials = self.blobs.partials
            self.guard.divert = self.swarm.hub.accept
        self.manifests = ManifestService(self.store, self.upstreams, self.metrics)
        self.presence = Presence(self.config, self.store, self._session)
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
        self.presence.start()
        log.info(
            "shoal agent %s listening on %s, registries: %s",
            __version__,
            self.url,
            ", ".join(f"{k}={v}" for k, v in self.config.registries.items()),
        )
        return self.url

    def _build_swarm(self, origin: OriginSource) -> SwarmSource:
        assert self._session is not None
        token = self.config.peer_token()
        scheduler = SchedulerClient(self._session, list(self.config.schedulers), token, zone=self.config.zone)
        for advice in self.config.swarm.advice():
            log.warning("%s", advice)
        config, hub_config = swarm_configs(self.config.swarm, self.config.advertise_address, token)
        hub = PeerHub(hub_config, self.store, {}, self.metrics, self.bucket)
        swarm = SwarmSource(config, origin, scheduler, self.upstreams, self.store, hub, self.bucket, self.metrics)
        swarm.start()
        return swarm

    async def stop(self) -> None:
        with contextlib.suppress(AttributeError):
            await self.presence.stop()
        await self.guard.stop()
        if self._listener is not None:
            self._listener.close()
        if self.swarm is not None:
            await self.swarm.close()
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
        if self._runner is not None:
            await self._runner.cleanup()
        with contextlib.suppress(AttributeError):
            await self.blobs.close()
        if self._session is not None:
            await self._session.close()

    async def _evict_periodically(self) -> None:
        while True:
            await asyncio.sleep(EVICTION_INTERVAL)
            self.store.evict_expired()
            self.metrics.cache_bytes.set(self.store.total_size)
            self.metrics.cache_entries.set(self.store.count)

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=1 << 20)
        app.router.add_get("/healthz", self._healthz)
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
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The one boundary where errors become responses: DistributionError as the OCI
        ``{"errors": [...]}`` body, an upstream failure mapped for the path asked for."""
        started = time.monotonic()
        status = 500
        self.guard.busy(request.protocol)
        try:
            try:
                response = await handler(request)
            except (UpstreamError, aiohttp.ClientError, TimeoutError) as exc:
                dist = request.get(DIST)
                if dist is None:
                    raise
                if not isinstance(exc, UpstreamError):  # the registry broke off while we read an answer
                    exc = UpstreamUnavailable(f"{dist.registry} broke off: {exc!r}")
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
