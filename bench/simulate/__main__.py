"""``python -m bench.simulate``: see :mod:`bench.simulate.cli`."""

from bench.simulate.cli import main

raise SystemExit(main())
