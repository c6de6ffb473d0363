"""``POST /v1/enroll``: an agent trades proof of which node it is for a short-lived certificate.

Served only over TLS (the token inside never crosses the network in clear). In a cluster the
proof is the agent Pod's projected ServiceAccount token, checked with the API server
(``kube.py``) and turned into a grant by ``issuance.grant_for_pod``; in a lab, the peer token
and the connection's source address (``issuance.grant_for_lab``).
"""

from __future__ import annotations

import datetime
import hmac
import json
import logging
from dataclasses import dataclass

from aiohttp import web

from shoal.core.hosts import is_ip_literal
from shoal.core.ratelog import RateLimitedLog
from shoal.p2p.enrollment import ENROLL_PATH
from shoal.scheduler.ca import CaError, CaSource
from shoal.scheduler.issuance import (
    CsrRequest,
    EnrollmentRefused,
    Grant,
    Reserved,
    grant_for_lab,
    grant_for_pod,
    read_csr,
)
from shoal.scheduler.kube import ClusterFacts

log = logging.getLogger(__name__)

__all__ = ["ClusterProof", "Enrollment"]

MAX_TOKEN = 16 << 10
MAX_IN_FLIGHT = 8
"""enrollments checked at once: each costs a TokenReview and two reads of the API server,
and anyone may ask, so a flood is answered 503 here rather than passed on to the API."""


@dataclass(frozen=True, slots=True)
class ClusterProof:
    """How agents prove their node in a cluster."""

    facts: ClusterFacts
    audience: str
    """the audience the agents' projected tokens are minted for."""
    service_account: str
    """``NAMESPACE:NAME`` of the agents' ServiceAccount."""


class Enrollment:
    """Issues node certificates.

    Parameters:
        ca: the CA that signs them.
        valid_for: their lifetime (agents renew at two thirds of it).
        reserved: the scheduler's own names and addresses, never given to a node.
        cluster: prove nodes with the Kubernetes API; None: with ``peer_token`` (a lab).
        peer_token: the lab's shared secret.
    """

    def __init__(
        self,
        ca: CaSource,
        valid_for: datetime.timedelta,
        reserved: Reserved,
        *,
        cluster: ClusterProof | None,
        peer_token: str | None,
    ) -> None:
        if cluster is None and peer_token is None:
            raise ValueError("enrollment needs the Kubernetes API or a peer token to check callers against")
        self.ca = ca
        self.valid_for = valid_for
        self.reserved = reserved
        self.cluster = cluster
        self._peer_token = peer_token.encode() if peer_token is not None else None
        self._in_flight = 0
        self._refusals = RateLimitedLog(log, "enrollments refused")

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(ENROLL_PATH, self._post)

    async def grant(self, csr_pem: str, token: str, source: str | None) -> tuple[Grant, CsrRequest]:
        """(the grant, the checked CSR) or ``EnrollmentRefused``."""
        csr = read_csr(csr_pem)
        if self.cluster is not None:
            facts = self.cluster.facts
            review = await facts.review_token(token, self.cluster.audience)
            pod = node = None
            if review.authenticated and review.pod_name:
                namespace = self.cluster.service_account.partition(":")[0]
                pod = await facts.pod(namespace, review.pod_name)
                if pod is not None and pod.node_name:
                    node = await facts.node(pod.node_name)
            return grant_for_pod(
                csr,
                review,
                pod,
                node,
                audience=self.cluster.audience,
                service_account=self.cluster.service_account,
                reserved=self.reserved,
            ), csr
        assert self._peer_token is not None
        if not hmac.compare_digest(token.encode(), self._peer_token):
            raise EnrollmentRefused("token: not the peer token", 401)
        return grant_for_lab(csr, source or "", reserved=self.reserved), csr

    async def _post(self, request: web.Request) -> web.Response:
        if request.transport is None or request.transport.get_extra_info("ssl_object") is None:
            raise web.HTTPForbidden(text="enrollment: only over TLS\n")
        try:
            body = json.loads(await request.read())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise web.HTTPBadRequest(text='enrollment: want {"csr": PEM, "token": "..."}\n') from None
        if (
            not isinstance(body, dict)
            or set(body) != {"csr", "token"}
            or not all(isinstance(v, str) for v in body.values())
        ):
            raise web.HTTPBadRequest(text='enrollment: want {"csr": PEM, "token": "..."}\n')
        if len(body["token"]) > MAX_TOKEN:
            raise web.HTTPBadRequest(text=f"enrollment: the token is longer than {MAX_TOKEN} characters\n")
        if self._in_flight >= MAX_IN_FLIGHT:
            raise web.HTTPServiceUnavailable(text="enrollment: busy, retry later\n", headers={"Retry-After": "2"})
        self._in_flight += 1
        try:
            return await self._issue(request, body["csr"], body["token"])
        finally:
            self._in_flight -= 1

    async def _issue(self, request: web.Request, csr_pem: str, token: str) -> web.Response:
        try:
            grant, csr = await self.grant(csr_pem, token, request.remote)
            authority = self.ca.current()
            issued = authority.issue(
                csr.public_key,
                grant.name,
                dns_names=[] if is_ip_literal(grant.name) else [grant.name],
                ips=grant.ips,
                zone=grant.zone,
                valid_for=self.valid_for,
                client=True,
            )
        except EnrollmentRefused as exc:
            self._refusals.note(f"from {request.remote}: {exc}", f"HTTP {exc.status}")
            raise _refusal(exc) from None
        except CaError as exc:
            log.error("cannot issue node certificates: %s", exc)
            raise web.HTTPServiceUnavailable(text="enrollment: the scheduler's CA does not load\n") from None
        except Exception as exc:  # the Kubernetes client's errors: HTTP, connection, decoding
            log.error("cannot check an enrollment with the Kubernetes API: %s", str(exc).splitlines()[0][:300])
            raise web.HTTPServiceUnavailable(text="enrollment: the Kubernetes API does not answer\n") from None
        log.info("issued a certificate to node %s (%s) until %s", grant.name, ", ".join(grant.ips), issued.not_after)
        return web.json_response(
            {
                "certificate": issued.pem.decode(),
                "ca": authority.trust_pem.decode(),
                "not_after": issued.not_after.isoformat(),
            }
        )


def _refusal(exc: EnrollmentRefused) -> web.HTTPException:
    text = f"enrollment: {exc}\n"
    if exc.status == 400:
        return web.HTTPBadRequest(text=text)
    if exc.status == 401:
        return web.HTTPUnauthorized(text=text)
    if exc.status == 503:
        return web.HTTPServiceUnavailable(text=text)
    return web.HTTPForbidden(text=text)
