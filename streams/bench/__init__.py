"""``streams bench``: throughput, latency and memory of the pipeline and its baselines."""
