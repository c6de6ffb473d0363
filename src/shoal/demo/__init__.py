"""Material for ``shoal demo``, tests and benchmarks: generated images and a tiny origin."""
