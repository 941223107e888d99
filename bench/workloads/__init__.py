"""The workloads of the benchmark, one module per family."""
