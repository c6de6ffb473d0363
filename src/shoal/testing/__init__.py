"""Drive the real third-party programs (docker-registry, skopeo, containerd) in tests and benches.

Everything here starts private instances under a directory the caller owns, stops them by
PID and fails with a clear message when a program is missing.
"""
