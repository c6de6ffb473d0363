"""The node agent: an OCI pull-through mirror with a disk cache, and (with a scheduler) a swarm peer."""
