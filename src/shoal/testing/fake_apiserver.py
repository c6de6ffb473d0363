"""A local HTTP server speaking the subset of the Kubernetes API Shoal's controllers use.

Core v1 Secrets: list and watch across namespaces (chunked JSON event stream, the way the
API server sends it), create, read, replace, delete. Every write bumps a resourceVersion and
is delivered to open watches, so the real ``kubernetes`` client sees real semantics (409 on
create of an existing name, 404 on a missing one, 410 for an expired version). Core v1
Nodes: read and replace (409 when the resourceVersion sent is not the current one), for
``shoal node-ready``. Core v1 Pods: read, and list and watch across namespaces by label, for
the webhook's controller (Pods are added with ``put_pod``, as the API server would store them).
TokenReview: tokens registered with :meth:`FakeApiServer.add_token` are authenticated for
their audiences until they expire, with the pod-name/pod-uid extras a projected
ServiceAccount token carries; any other token is not.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

Json = dict[str, Any]
_ITEM = re.compile(r"^/api/v1/namespaces/([^/]+)/secrets(?:/([^/]+))?$")
_NODE = re.compile(r"^/api/v1/nodes/([^/]+)$")
_POD = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)$")
_TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"


class _Server(ThreadingHTTPServer):
    """Remembers its open connections, so that closing the server ends the keep-alive ones
    a client (Helm's Go client, the kubernetes package) still holds: their handler threads
    then close the sockets, instead of a garbage collector much later."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.open_requests: set[socket.socket] = set()
        self.open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.open_lock:
            self.open_requests.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.open_lock:
            self.open_requests.discard(request)
        super().shutdown_request(request)

    def end_open_requests(self) -> None:
        with self.open_lock:
            still_open = list(self.open_requests)
        for request in still_open:
            with contextlib.suppress(OSError):
                request.shutdown(socket.SHUT_RDWR)


class FakeApiServer:
    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], Json] = {}
        self.nodes: dict[str, Json] = {}
        self.pods: dict[tuple[str, str], Json] = {}
        self.tokens: dict[str, Json] = {}
        """token -> {"user": UserInfo, "audiences": [...], "expires": Unix time}"""
        self.events: list[tuple[int, str, Json]] = []
        self.requests: list[tuple[str, str]] = []
        self.version = 100
        self.changed = threading.Condition()
        self.closing = False
        self.generation = 0
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig for this server (a bearer token it ignores), for the programs under test."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": self.url}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
        path.write_text(json.dumps(config))  # JSON is YAML
        return path

    def start(self) -> FakeApiServer:
        self._thread.start()
        return self

    def end_watches(self) -> None:
        """End every open watch stream, as an API server does at its timeout."""
        with self.changed:
            self.generation += 1
            self.changed.notify_all()

    def close(self) -> None:
        with self.changed:
            self.closing = True
            self.changed.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._server.end_open_requests()

    # -- state changes, as kubectl would make them --------------------------------------

    def put(self, secret: Json) -> Json:
        with self.changed:
            secret = copy.deepcopy(secret)
            meta = secret.setdefault("metadata", {})
            key = (meta["namespace"], meta["name"])
            kind = "MODIFIED" if key in self.secrets else "ADDED"
            meta.setdefault("uid", self.secrets.get(key, {}).get("metadata", {}).get("uid") or str(uuid.uuid4()))
            self.version += 1
            meta["resourceVersion"] = str(self.version)
            secret.setdefault("apiVersion", "v1")
            secret.setdefault("kind", "Secret")
            self.secrets[key] = secret
            self.events.append((self.version, kind, copy.deepcopy(secret)))
            self.changed.notify_all()
            return copy.deepcopy(secret)

    def remove(self, namespace: str, name: str) -> Json | None:
        with self.changed:
            secret = self.secrets.pop((namespace, name), None)
            if secret is None:
                return None
            self.version += 1
            secret["metadata"]["resourceVersion"] = str(self.version)
            self.events.append((self.version, "DELETED", copy.deepcopy(secret)))
            self.changed.notify_all()
            return secret

    def get(self, namespace: str, name: str) -> Json | None:
        with self.changed:
            found = self.secrets.get((namespace, name))
            return copy.deepcopy(found) if found else None

    def put_pod(self, pod: Json) -> Json:
        with self.changed:
            pod = copy.deepcopy(pod)
            meta = pod.setdefault("metadata", {})
            meta.setdefault("name", meta.get("generateName", "pod-") + uuid.uuid4().hex[:5])
            meta.setdefault("uid", str(uuid.uuid4()))
            key = (meta["namespace"], meta["name"])
            kind = "MODIFIED" if key in self.pods else "ADDED"
            self.version += 1
            meta["resourceVersion"] = str(self.version)
            pod.setdefault("apiVersion", "v1")
            pod["kind"] = "Pod"
            self.pods[key] = pod
            self.events.append((self.version, kind, copy.deepcopy(pod)))
            self.changed.notify_all()
            return copy.deepcopy(pod)

    def put_node(self, node: Json) -> Json:
        with self.changed:
            node = copy.deepcopy(node)
            self.version += 1
            node.setdefault("metadata", {})["resourceVersion"] = str(self.version)
            node.setdefault("apiVersion", "v1")
            node.setdefault("kind", "Node")
            self.nodes[node["metadata"]["name"]] = node
            return copy.deepcopy(node)

    def get_node(self, name: str) -> Json | None:
        with self.changed:
            found = self.nodes.get(name)
            return copy.deepcopy(found) if found else None

    def remove_pod(self, namespace: str, name: str) -> None:
        with self.changed:
            pod = self.pods.pop((namespace, name), None)
            if pod is not None:
                self.version += 1
                self.events.append((self.version, "DELETED", copy.deepcopy(pod)))
                self.changed.notify_all()

    def add_token(
        self, token: str, service_account: str, pod: Json | None, audiences: list[str], expires_in: float = 3600.0
    ) -> None:
        """A projected token of ``NAMESPACE:NAME`` bound to ``pod`` (as the kubelet mints them)."""
        namespace, _, name = service_account.partition(":")
        extra: dict[str, list[str]] = {}
        if pod is not None:
            extra = {
                "authentication.kubernetes.io/pod-name": [pod["metadata"]["name"]],
                "authentication.kubernetes.io/pod-uid": [pod["metadata"]["uid"]],
            }
        user = {
            "username": f"system:serviceaccount:{namespace}:{name}",
            "uid": str(uuid.uuid4()),
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
            "extra": extra,
        }
        with self.changed:
            self.tokens[token] = {"user": user, "audiences": audiences, "expires": time.time() + expires_in}

    def review(self, spec: Json) -> Json:
        with self.changed:
            known = copy.deepcopy(self.tokens.get(str(spec.get("token"))))
        wanted = list(spec.get("audiences") or [])
        if known is None:
            return {"authenticated": False, "error": "invalid bearer token"}
        if known["expires"] <= time.time():
            return {"authenticated": False, "error": "invalid bearer token, token has expired"}
        matched = [a for a in wanted if a in known["audiences"]] if wanted else known["audiences"]
        if not matched:
            return {"authenticated": False, "error": "invalid bearer token, token audiences is invalid"}
        return {"authenticated": True, "user": known["user"], "audiences": matched}

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> bool:
        """Poll ``predicate(self)``: it may also look at state outside this server."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    # -- HTTP ------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Json) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._send(
                    code,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "reason": reason,
                        "message": message,
                        "code": code,
                    },
                )

            def _body(self) -> Json:
                length = int(self.headers.get("Content-Length") or 0)
                loaded: Json = json.loads(self.rfile.read(length))
                return loaded

            def do_GET(self) -> None:
                parsed = urlparse(self.path)
                query = parse_qs(parsed.query)
                fake.requests.append(("GET", self.path))
                if parsed.path == "/version":
                    self._send(200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0"})
                    return
                if parsed.path in ("/api/v1/secrets", "/api/v1/pods"):
                    resource = "Secret" if parsed.path.endswith("secrets") else "Pod"
                    selector = query.get("fieldSelector", [""])[0]
                    labels = query.get("labelSelector", [""])[0]
                    if query.get("watch", ["false"])[0] == "true":
                        timeout = float(query.get("timeoutSeconds", ["300"])[0])
                        since = int(query.get("resourceVersion", ["0"])[0])
                        self._watch(since, selector, time.monotonic() + timeout, resource, labels)
                    elif resource == "Pod":
                        self._list_pods(labels)
                    else:
                        self._list(selector, "", labels)
                    return
                pod = _POD.match(parsed.path)
                if pod:
                    with fake.changed:
                        found_pod = copy.deepcopy(fake.pods.get((pod.group(1), pod.group(2))))
                    if found_pod is None:
                        self._status(404, "NotFound", "pod not found")
                    else:
                        self._send(200, found_pod)
                    return
                node = _NODE.match(parsed.path)
                if node:
                    found_node = fake.get_node(node.group(1))
                    if found_node is None:
                        self._status(404, "NotFound", "node not found")
                    else:
                        self._send(200, found_node)
                    return
                match = _ITEM.match(parsed.path)
                if match and not match.group(2):
                    self._list(query.get("fieldSelector", [""])[0], match.group(1), query.get("labelSelector", [""])[0])
                    return
                if match and match.group(2):
                    found = fake.get(match.group(1), match.group(2))
                    if found is None:
                        self._status(404, "NotFound", "secret not found")
                    else:
                        self._send(200, found)
                    return
                self._status(404, "NotFound", parsed.path)

            def _matches(self, secret: Json, selector: str) -> bool:
                if not selector:
                    return True
                field, _, value = selector.partition("=")
                return field == "type" and secret.get("type") == value

            def _labelled(self, secret: Json, selector: str) -> bool:
                """Equality-based label selectors (``a=b,c=d``), the form Helm's storage sends."""
                labels = secret.get("metadata", {}).get("labels") or {}
                pairs = (term.partition("=") for term in selector.split(",") if term)
                return all(labels.get(key) == value for key, _, value in pairs)

            def _list_pods(self, labels: str) -> None:
                with fake.changed:
                    items = [copy.deepcopy(p) for p in fake.pods.values() if self._labelled(p, labels)]
                    version = fake.version
                body = {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": str(version)}}
                self._send(200, {**body, "items": items})

            def _list(self, selector: str, namespace: str = "", labels: str = "") -> None:
                with fake.changed:
                    items = [
                        copy.deepcopy(s)
                        for (ns, _), s in fake.secrets.items()
                        if self._matches(s, selector) and namespace in ("", ns) and self._labelled(s, labels)
                    ]
                    version = fake.version
                self._send(
                    200,
                    {
                        "kind": "SecretList",
                        "apiVersion": "v1",
                        "metadata": {"resourceVersion": str(version)},
                        "items": items,
                    },
                )

            def _watch(self, since: int, selector: str, deadline: float, resource: str, labels: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                with fake.changed:
                    oldest = fake.events[0][0] if fake.events else fake.version + 1
                    expired = since < oldest - 1 and since < fake.version
                sent = since
                generation = fake.generation
                if expired:
                    self._chunk(
                        {
                            "type": "ERROR",
                            "object": {
                                "kind": "Status",
                                "apiVersion": "v1",
                                "status": "Failure",
                                "message": "too old resource version",
                                "reason": "Expired",
                                "code": 410,
                            },
                        }
                    )
                    self._end()
                    return
                while True:
                    with fake.changed:
                        fake.changed.wait_for(
                            lambda: (
                                fake.closing
                                or fake.generation != generation
                                or (fake.events and fake.events[-1][0] > sent)  # noqa: B023
                            ),
                            timeout=1.0,
                        )
                        if fake.closing or fake.generation != generation or time.monotonic() > deadline:
                            break
                        pending = [e for e in fake.events if e[0] > sent]
                    for version, kind, obj in pending:
                        sent = version
                        wanted = obj.get("kind") == resource and self._labelled(obj, labels)
                        if wanted and self._matches(obj, selector):
                            try:
                                self._chunk({"type": kind, "object": obj})
                            except OSError:
                                return
                self._end()

            def _chunk(self, event: Json) -> None:
                data = json.dumps(event).encode() + b"\n"
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _end(self) -> None:
                try:
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except OSError:
                    pass

            def do_POST(self) -> None:
                fake.requests.append(("POST", self.path))
                if urlparse(self.path).path == _TOKEN_REVIEWS:
                    review = self._body()
                    review["status"] = fake.review(review.get("spec") or {})
                    self._send(201, review)
                    return
                match = _ITEM.match(urlparse(self.path).path)
                if not match or match.group(2):
                    self._status(404, "NotFound", self.path)
                    return
                body = self._body()
                body["metadata"]["namespace"] = match.group(1)
                if fake.get(match.group(1), body["metadata"]["name"]) is not None:
                    self._status(409, "AlreadyExists", "secret already exists")
                    return
                self._send(201, fake.put(body))

            def _put_node(self, name: str) -> None:
                body = self._body()
                current = fake.get_node(name)
                if current is None:
                    self._status(404, "NotFound", "node not found")
                elif body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                    self._status(409, "Conflict", "the object has been modified")
                else:
                    self._send(200, fake.put_node(body))

            def do_PUT(self) -> None:
                fake.requests.append(("PUT", self.path))
                node = _NODE.match(urlparse(self.path).path)
                if node:
                    self._put_node(node.group(1))
                    return
                match = _ITEM.match(urlparse(self.path).path)
                if not match or not match.group(2):
                    self._status(404, "NotFound", self.path)
                    return
                body = self._body()
                current = fake.get(match.group(1), match.group(2))
                if current is None:
                    self._status(404, "NotFound", "secret not found")
                    return
                sent_version = body["metadata"].get("resourceVersion")
                if sent_version and sent_version != current["metadata"]["resourceVersion"]:
                    self._status(409, "Conflict", "the object has been modified")
                    return
                body["metadata"]["namespace"] = match.group(1)
                body["metadata"]["uid"] = current["metadata"]["uid"]
                self._send(200, fake.put(body))

            def do_DELETE(self) -> None:
                fake.requests.append(("DELETE", self.path))
                match = _ITEM.match(urlparse(self.path).path)
                if not match or not match.group(2):
                    self._status(404, "NotFound", self.path)
                    return
                removed = fake.remove(match.group(1), match.group(2))
                if removed is None:
                    self._status(404, "NotFound", "secret not found")
                else:
                    self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

        return Handler
