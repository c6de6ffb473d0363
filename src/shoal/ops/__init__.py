"""Operator tools behind ``shoal preheat``, ``shoal status`` and ``shoal install``: they talk to a
running Shoal (or to Helm) from outside it and are never imported by the agent, scheduler or webhook."""
