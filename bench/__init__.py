"""Benchmarks: each script ends by printing one JSON line of figures."""
