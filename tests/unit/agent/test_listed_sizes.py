"""ListedSizes: the sizes a manifest lists, per credentials and repository, for a while."""

from __future__ import annotations

import json

from shoal.agent.listed_sizes import ListedSizes
from shoal.core.digest import Digest
from shoal.oci.auth import Credentials
from shoal.oci.distribution import DistributionPath, PathKind

CONFIG = Digest.of(b"config")
LAYER = Digest.of(b"layer")
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(CONFIG), "size": 6},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": str(LAYER), "size": 5}],
    }
).encode()
ALICE = Credentials("alice", "secret")


def blob(digest: Digest, repository: str = "team/app", registry: str = "reg") -> DistributionPath:
    return DistributionPath(PathKind.BLOB, registry, repository, str(digest), digest)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_config_and_layers_sizes_are_listed() -> None:
    sizes = ListedSizes()
    sizes.note(ALICE, "reg", "team/app", MANIFEST)
    assert sizes.size(ALICE, blob(CONFIG)) == 6
    assert sizes.size(ALICE, blob(LAYER)) == 5


def test_a_size_is_only_for_the_credentials_and_repository_that_read_the_manifest() -> None:
    sizes = ListedSizes()
    sizes.note(ALICE, "reg", "team/app", MANIFEST)
    assert sizes.size(None, blob(LAYER)) is None
    assert sizes.size(Credentials("bob", "x"), blob(LAYER)) is None
    assert sizes.size(ALICE, blob(LAYER, repository="team/other")) is None
    assert sizes.size(ALICE, blob(LAYER, registry="other")) is None


def test_a_size_expires() -> None:
    clock = Clock()
    sizes = ListedSizes(ttl=10.0, clock=clock)
    sizes.note(None, "reg", "team/app", MANIFEST)
    clock.now += 10.5
    assert sizes.size(None, blob(LAYER)) is None


def test_indexes_and_odd_documents_list_nothing() -> None:
    sizes = ListedSizes()
    index = {"manifests": [{"digest": str(LAYER), "size": 5, "platform": {"os": "linux"}}]}
    for doc in (json.dumps(index).encode(), b"not json", b"[1, 2]", b'{"layers": "x", "config": 3}'):
        sizes.note(None, "reg", "team/app", doc)
    bad = {
        "layers": [
            {"digest": "nope", "size": 5},
            {"digest": str(LAYER), "size": -1},
            {"digest": str(CONFIG), "size": True},
        ]
    }
    sizes.note(None, "reg", "team/app", json.dumps(bad).encode())
    assert len(sizes) == 0


def test_the_oldest_go_first_beyond_the_bound() -> None:
    sizes = ListedSizes(max_entries=1)
    sizes.note(None, "reg", "team/app", MANIFEST)
    assert len(sizes) == 1
    assert sizes.size(None, blob(LAYER)) == 5
