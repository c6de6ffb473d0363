"""Shoal: peer-to-peer container image distribution for Kubernetes."""

__version__ = "0.1.0"
