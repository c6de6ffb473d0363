"""Prometheus metrics of one agent, on a registry of its own (several agents share a test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "shoal_agent_requests",
            "Mirror requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "shoal_agent_request_duration_seconds",
            "Time to response headers by route",
            ["route"],
            registry=r,
        )
        self.bytes_served = Counter(
            "shoal_agent_blob_bytes_served",
            "Blob bytes sent to clients, by where they came from "
            "(cache: complete cached blob; stream: a blob still arriving; passthrough: uncached)",
            ["source"],
            registry=r,
        )
        self.origin_bytes = Counter(
            "shoal_agent_origin_bytes",
            "Blob bytes fetched from upstream registries",
            ["registry"],
            registry=r,
        )
        self.peer_bytes = Counter(
            "shoal_agent_peer_bytes",
            "Piece bytes exchanged with peers",
            ["direction"],
            registry=r,
        )
        self.pieces_served = Counter("shoal_agent_pieces_served", "Pieces uploaded to peers", registry=r)
        self.peer_uploads_aborted = Counter(
            "shoal_agent_peer_uploads_aborted", "Piece uploads whose connection broke mid-piece", registry=r
        )
        self.pieces_received = Counter(
            "shoal_agent_pieces_received", "Verified pieces downloaded from peers", registry=r
        )
        self.pieces_refused = Counter(
            "shoal_agent_pieces_refused",
            "Piece requests answered REJECT (not held verified, or superseeding while downloading)",
            registry=r,
        )
        self.fallbacks_refused = Counter(
            "shoal_agent_fallbacks_refused",
            "Stuck swarm downloads told to wait: the blob's fallback leases were all held",
            registry=r,
        )
        self.peer_links = Gauge("shoal_agent_peer_links", "Open peer connections (both directions)", registry=r)
        self.peer_links_refused = Counter(
            "shoal_agent_peer_links_refused", "Peer connections refused (limit, failed handshake)", registry=r
        )
        self.parents = Gauge("shoal_agent_parents", "Parents currently used, over all downloads", registry=r)
        self.swarm_fallbacks = Counter(
            "shoal_agent_swarm_fallbacks",
            "Downloads that left the swarm for the origin, by reason",
            ["reason"],
            registry=r,
        )
        self.lease_acquired = Counter(
            "shoal_agent_fetcher_leases", "Times this agent became a blob's origin fetcher", registry=r
        )
        self.cache_hits = Counter(
            "shoal_agent_cache_hits",
            "Requests answered from the local cache",
            ["kind"],
            registry=r,
        )
        self.cache_misses = Counter(
            "shoal_agent_cache_misses",
            "Requests that needed a download",
            ["kind"],
            registry=r,
        )
        self.cache_bytes = Gauge("shoal_agent_cache_bytes", "Bytes in the cache (blobs and manifests)", registry=r)
        self.cache_entries = Gauge("shoal_agent_cache_entries", "Blobs and manifests cached", registry=r)
        self.evictions = Counter(
            "shoal_agent_cache_evictions",
            "Cache entries deleted",
            ["reason"],
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "shoal_agent_upstream_latency_seconds",
            "Upstream time to response headers",
            ["registry", "kind"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "shoal_agent_upstream_errors",
            "Failed upstream fetches by reason",
            ["registry", "reason"],
            registry=r,
        )
        self.inflight = Gauge("shoal_agent_downloads_inflight", "Blobs being downloaded", registry=r)
        self.digest_mismatches = Counter(
            "shoal_agent_digest_mismatches",
            "Blobs or pieces whose content did not match",
            ["source"],
            registry=r,
        )
        self.access_checks = Counter(
            "shoal_agent_access_checks",
            "Registry checks that a repository holds a digest for a client's credentials, "
            "made before cached content is served (allowed, refused, stale: registry down, earlier yes used)",
            ["result"],
            registry=r,
        )
        self.stale_responses = Counter(
            "shoal_agent_stale_responses",
            "Manifests and blobs served from what the cluster holds because their registry could not "
            "answer (marked with a Warning header)",
            ["kind"],
            registry=r,
        )
        self.registry_down = Gauge(
            "shoal_agent_registry_down",
            "1 while the registry is marked down (its circuit breaker is open), else 0",
            ["registry"],
            registry=r,
        )
        self.registry_outages = Gauge(
            "shoal_agent_registry_outages",
            "Outages of the registry seen since the agent started",
            ["registry"],
            registry=r,
        )
        self.connections = Gauge("shoal_agent_connections", "Open client and peer connections", registry=r)
        self.connections_closed = Counter(
            "shoal_agent_connections_closed",
            "Connections the agent closed itself, by reason "
            "(idle: no complete request in time; evicted: idle, to make room; refused: at the limit)",
            ["reason"],
            registry=r,
        )
        self.responses_cut = Counter(
            "shoal_agent_responses_cut",
            "Responses aborted after their headers were sent (a digest mismatch, a failed "
            "upstream, a client that stopped reading or went away)",
            registry=r,
        )
