"""Admission webhook: rewrites images of accelerated registries to the node-local agent.

``mutate`` and ``pullsecrets`` are pure (they decide and build JSONPatches and Secrets);
``server`` is the HTTPS edge and ``controller`` keeps derived pull secrets in sync.
"""
