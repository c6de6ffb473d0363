"""``shoal node-config``: the container runtime's mirror configuration on one node.

``render`` builds file contents as pure functions, ``containerd`` reads containerd's own
configuration, ``files`` writes and removes only the files node-config owns.
"""
