"""NetworkPolicies: the webhook and the scheduler take connections on their one port only."""

from __future__ import annotations

from .test_chart_render import Doc, docs, find


def selects(policy: Doc, workload: Doc) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in policy["spec"]["podSelector"]["matchLabels"].items())


def container_ports(workload: Doc) -> set[int]:
    return {p["containerPort"] for c in workload["spec"]["template"]["spec"]["containers"] for p in c["ports"]}


class TestByDefault:
    """On by default: each policy selects its workload's Pods and admits exactly its port."""

    def test_webhook(self) -> None:
        rendered = docs()
        policy, webhook = find(rendered, "NetworkPolicy", "-webhook"), find(rendered, "Deployment", "-webhook")
        assert selects(policy, webhook)
        assert not selects(policy, find(rendered, "StatefulSet", "-scheduler"))
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        [rule] = policy["spec"]["ingress"]
        assert rule == {"ports": [{"protocol": "TCP", "port": 8443}]}
        assert container_ports(webhook) == {8443}

    def test_scheduler(self) -> None:
        rendered = docs()
        policy, scheduler = find(rendered, "NetworkPolicy", "-scheduler"), find(rendered, "StatefulSet", "-scheduler")
        assert selects(policy, scheduler)
        [rule] = policy["spec"]["ingress"]
        assert rule == {"ports": [{"protocol": "TCP", "port": 8002}]}
        assert container_ports(scheduler) == {8002}

    def test_ports_follow_the_values(self) -> None:
        rendered = docs("webhook.port=9443", "scheduler.port=9002")
        assert find(rendered, "NetworkPolicy", "-webhook")["spec"]["ingress"][0]["ports"][0]["port"] == 9443
        assert find(rendered, "NetworkPolicy", "-scheduler")["spec"]["ingress"][0]["ports"][0]["port"] == 9002

    def test_no_policy_selects_the_host_network_agents(self) -> None:
        rendered = docs()
        agent = find(rendered, "DaemonSet", "-agent")
        assert agent["spec"]["template"]["spec"]["hostNetwork"] is True
        assert not any(selects(p, agent) for p in rendered if p["kind"] == "NetworkPolicy")


class TestValues:
    """Sources can be narrowed, policies turned off, and follow the components that exist."""

    def test_sources(self) -> None:
        rendered = docs(
            "networkPolicy.webhookFrom[0].ipBlock.cidr=10.0.0.0/28",
            "networkPolicy.schedulerFrom[0].ipBlock.cidr=10.1.0.0/16",
        )
        webhook_rule = find(rendered, "NetworkPolicy", "-webhook")["spec"]["ingress"][0]
        scheduler_rule = find(rendered, "NetworkPolicy", "-scheduler")["spec"]["ingress"][0]
        assert webhook_rule["from"] == [{"ipBlock": {"cidr": "10.0.0.0/28"}}]
        assert scheduler_rule["from"] == [{"ipBlock": {"cidr": "10.1.0.0/16"}}]

    def test_off(self) -> None:
        assert not [d for d in docs("networkPolicy.enabled=false") if d["kind"] == "NetworkPolicy"]

    def test_mirror_mode_has_no_webhook_policy(self) -> None:
        names = [d["metadata"]["name"] for d in docs("mode=mirror") if d["kind"] == "NetworkPolicy"]
        assert names == ["shoal-scheduler"]

    def test_source_mode_has_no_scheduler_policy(self) -> None:
        rendered = docs("p2p.plusMode.downloadPattern=source")
        names = [d["metadata"]["name"] for d in rendered if d["kind"] == "NetworkPolicy"]
        assert names == ["shoal-webhook"]
