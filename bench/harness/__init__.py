"""Building blocks of the benchmarks: child processes, servers, load generators, report."""
