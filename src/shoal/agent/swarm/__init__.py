"""Get a blob from the swarm: the agent's swarm I/O.

- :mod:`~shoal.agent.swarm.source`: :class:`SwarmSource`, the agent's BlobSource in ``p2p``
  mode (downloads, the fallback to the origin, seeding announcements, peers to avoid);
- :mod:`~shoal.agent.swarm.download`: :class:`SwarmDownload`, the task that owns one blob's
  pure :class:`~shoal.p2p.download_state.DownloadState` and carries out its actions;
- :mod:`~shoal.agent.swarm.seeds`: :class:`~shoal.agent.swarm.seeds.SeedBook`, the pure
  books of what outlives one download (seeding announcements, hash publication, blame);
- :mod:`~shoal.agent.swarm.ports`: the narrow interfaces a download is given (scheduler,
  peer links, origin), so tests give it fakes;
- :mod:`~shoal.agent.swarm.config`: :class:`SwarmConfig`.

Every swarm rule lives in :mod:`shoal.p2p.download_state`; this package is the I/O.
"""

from shoal.agent.swarm.config import SwarmConfig
from shoal.agent.swarm.download import JOIN_PATIENCE, TICK, SwarmDownload, SwarmGaveUpError, join_pause
from shoal.agent.swarm.ports import AvoidList, HubPort, OriginFill, PeerPort, SchedulerPort, SeedStore, SizeLookup
from shoal.agent.swarm.source import SwarmSource, piece_hashes

__all__ = [
    "JOIN_PATIENCE",
    "TICK",
    "AvoidList",
    "HubPort",
    "OriginFill",
    "PeerPort",
    "SchedulerPort",
    "SeedStore",
    "SizeLookup",
    "SwarmConfig",
    "SwarmDownload",
    "SwarmGaveUpError",
    "SwarmSource",
    "join_pause",
    "piece_hashes",
]
