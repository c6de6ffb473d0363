"""Swarm policies as plain functions: which piece to ask for next, from whom."""
