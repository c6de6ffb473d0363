"""The swarm: pieces, the peer and scheduler wire protocol, and the policies that pick pieces and peers."""
