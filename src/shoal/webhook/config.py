"""Webhook settings: which registries to accelerate, the agent endpoint, the label prefix."""

from __future__ import annotations

from dataclasses import dataclass

from shoal.core.reference import ReferenceError, canonical_registry, validate_registry

DEFAULT_ENDPOINT = "127.0.0.1:65001"
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
        endpoint: ``host:port`` of the node-local agent, as kubelet's runtime will reach it.
        label_prefix: prefix of the ``image-accelerate-mode`` label and the annotations;
            ``k8s.aliyun.com`` keeps manifests written for the brief working unchanged.
        secret_prefix, secret_suffix: derived pull secret name is prefix + original + suffix.
    """

    registries: frozenset[str]
    endpoint: str = DEFAULT_ENDPOINT
    label_prefix: str = DEFAULT_LABEL_PREFIX
    secret_prefix: str = DEFAULT_SECRET_PREFIX
    secret_suffix: str = DEFAULT_SECRET_SUFFIX

    @classmethod
    def build(
        cls,
        registries: list[str] | tuple[str, ...],
        *,
        endpoint: str = DEFAULT_ENDPOINT,
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
        try:
            validate_registry(endpoint)
        except ReferenceError:
            raise ConfigError(f"invalid --p2p-endpoint {endpoint!r}: want host:port") from None
        if ":" not in endpoint.rsplit("]", 1)[-1]:
            raise ConfigError(f"invalid --p2p-endpoint {endpoint!r}: want host:port")
        if not label_prefix or "/" in label_prefix:
            raise ConfigError(f"invalid --label-prefix {label_prefix!r}: a DNS subdomain")
        return cls(
            registries=frozenset(hosts),
            endpoint=endpoint,
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

    def derived_secret_name(self, original: str) -> str:
        return f"{self.secret_prefix}{original}{self.secret_suffix}"
