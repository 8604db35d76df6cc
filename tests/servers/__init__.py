"""Upstream servers the tests and benchmarks run as real processes (see model_server.py)."""
