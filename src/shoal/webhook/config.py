"""Webhook settings: which registries to accelerate, their alias hosts, the label prefix."""

from __future__ import annotations

from dataclasses import dataclass

from shoal.core.aliases import AliasError, alias_host, alias_table, validate_domain
from shoal.core.reference import ReferenceError, canonical_registry, validate_registry

DEFAULT_P2P_PORT = 65001
DEFAULT_LABEL_PREFIX = "k8s.aliyun.com"
DEFAULT_SECRET_PREFIX = "acr-credential-"
DEFAULT_SECRET_SUFFIX = "-p2p"
ENABLED_VALUE = "p2p"


class ConfigError(ValueError):
    """A webhook setting that cannot work."""


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """What the webhook accelerates and how it names what it adds.

    Parameters:
        registries: canonical registry hosts (``docker.io`` for Docker Hub) to accelerate.
        p2p_port: port of the alias hosts ``<registry host>[.<alias_domain>]:<p2p_port>`` that
            images are rewritten to (node-config routes them to the agent, else the registry).
        alias_domain: DNS suffix of the alias hosts; empty keeps the registry's host name.
        rewrite_without_pull_secret: also rewrite images whose registry credentials are not in
            the Pod's pull secrets (public registries, or node credentials that also cover
            the alias host); off, such images are left alone.
        label_prefix: prefix of the ``image-accelerate-mode`` label and the annotations;
            ``k8s.aliyun.com`` keeps manifests written for the brief working unchanged.
        secret_prefix, secret_suffix: derived pull secret name is prefix + original + suffix.
    """

    registries: frozenset[str]
    p2p_port: int = DEFAULT_P2P_PORT
    alias_domain: str = ""
    rewrite_without_pull_secret: bool = False
    label_prefix: str = DEFAULT_LABEL_PREFIX
    secret_prefix: str = DEFAULT_SECRET_PREFIX
    secret_suffix: str = DEFAULT_SECRET_SUFFIX

    @classmethod
    def build(
        cls,
        registries: list[str] | tuple[str, ...],
        *,
        p2p_port: int = DEFAULT_P2P_PORT,
        alias_domain: str = "",
        rewrite_without_pull_secret: bool = False,
        label_prefix: str = DEFAULT_LABEL_PREFIX,
        secret_prefix: str = DEFAULT_SECRET_PREFIX,
        secret_suffix: str = DEFAULT_SECRET_SUFFIX,
    ) -> WebhookConfig:
        """Validate and canonicalise user input (``index.docker.io`` -> ``docker.io``)."""
        if not registries:
            raise ConfigError("at least one --registry is required")
        hosts: set[str] = set()
        for raw in registries:
            host = raw.strip().removeprefix("https://").removeprefix("http://").rstrip("/")
            try:
                hosts.add(canonical_registry(validate_registry(host)))
            except ReferenceError as exc:
                raise ConfigError(str(exc)) from None
        if not 0 < p2p_port < 65536:
            raise ConfigError(f"invalid --p2p-port {p2p_port}: want 1-65535")
        try:
            alias_domain = validate_domain(alias_domain)
            alias_table(hosts, p2p_port, alias_domain)
            same = sorted(h for h in hosts if alias_host(h, p2p_port, alias_domain) == h)
        except AliasError as exc:
            raise ConfigError(str(exc)) from None
        if same:
            raise ConfigError(f"registry {same[0]} is on the p2p port {p2p_port}: set an alias domain")
        if not label_prefix or "/" in label_prefix:
            raise ConfigError(f"invalid --label-prefix {label_prefix!r}: a DNS subdomain")
        return cls(
            registries=frozenset(hosts),
            p2p_port=p2p_port,
            alias_domain=alias_domain,
            rewrite_without_pull_secret=rewrite_without_pull_secret,
            label_prefix=label_prefix,
            secret_prefix=secret_prefix,
            secret_suffix=secret_suffix,
        )

    @property
    def mode_key(self) -> str:
        """Label (on Pod or namespace) and annotation that switch acceleration on."""
        return f"{self.label_prefix}/image-accelerate-mode"

    @property
    def config_key(self) -> str:
        """Annotation recording what was rewritten; its presence marks a Pod as injected."""
        return f"{self.label_prefix}/p2p-config"

    @property
    def skipped_key(self) -> str:
        """Annotation saying why a Pod that asked for acceleration was left alone."""
        return f"{self.label_prefix}/p2p-skipped"

    def alias(self, registry: str) -> str:
        """The alias host images of ``registry`` are rewritten to."""
        return alias_host(registry, self.p2p_port, self.alias_domain)

    def derived_secret_name(self, original: str) -> str:
        return f"{self.secret_prefix}{original}{self.secret_suffix}"
