"""Every metric the chart's Grafana dashboard queries exists on the real /metrics endpoints.

The dashboard is rendered from the chart; the endpoints are a running scheduler, an agent
(P2P mode, pointed at it) and the webhook's app, each scraped over HTTP.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from shoal.agent.config import load_config
from shoal.agent.server import Agent
from shoal.ops.helm import build_values, manifest_documents, render
from shoal.scheduler.config import SchedulerConfig
from shoal.scheduler.server import Scheduler
from shoal.webhook.config import WebhookConfig
from shoal.webhook.server import create_app

METRIC = re.compile(r"\bshoal_[a-z0-9_]+\b")


def dashboard_metrics() -> set[str]:
    rendered = manifest_documents(render(build_values((), ("registries=registry.example.com",))))
    (config_map,) = [d for d in rendered if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    board = json.loads(config_map["data"]["shoal-rollout.json"])
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    return {name for expr in exprs for name in METRIC.findall(expr)}


def exposed(text: str) -> set[str]:
    """Names a query can use: each family's samples, also those of families with no samples yet."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            if kind == "counter":
                names.add(name if name.endswith("_total") else f"{name}_total")
            elif kind == "histogram":
                names.update(name + s for s in ("_bucket", "_sum", "_count"))
            else:
                names.add(name)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


async def scrape(session: aiohttp.ClientSession, url: str) -> set[str]:
    async with session.get(f"{url}/metrics") as resp:
        assert resp.status == 200
        return exposed(await resp.text())


class TestDashboardMetrics:
    """A dashboard panel that queries a metric nobody exports would stay empty forever."""

    async def test_every_queried_metric_is_exported(self, tmp_path: Path) -> None:
        wanted = dashboard_metrics()
        assert len(wanted) >= 15, wanted
        token = tmp_path / "token"
        token.write_text("t0ken")
        scheduler = Scheduler(SchedulerConfig(listen="127.0.0.1:0", peer_token="t0ken"))
        scheduler_url = await scheduler.start()
        agent = Agent(
            load_config(
                {
                    "registries": {"registry.example.com": "http://127.0.0.1:9"},
                    "cache_dir": str(tmp_path / "cache"),
                    "listen": "127.0.0.1:0",
                    "schedulers": [scheduler_url],
                    "peer_token_file": str(token),
                }
            )
        )
        webhook = TestServer(create_app(WebhookConfig.build(["registry.example.com"])))
        try:
            await agent.start()
            await webhook.start_server()
            async with aiohttp.ClientSession() as session:
                found = {
                    "agent": await scrape(session, agent.url),
                    "scheduler": await scrape(session, scheduler_url),
                    "webhook": await scrape(session, str(webhook.make_url("")).rstrip("/")),
                }
        finally:
            await webhook.close()
            await agent.stop()
            await scheduler.stop()
        for name in sorted(wanted):
            component = name.split("_")[1]
            assert name in found[component], f"dashboard queries {name}, not on the {component}'s /metrics"
