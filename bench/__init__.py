"""Benchmarks (never tests): `make bench` runs bench.proxybench; see bench/run.sh."""
