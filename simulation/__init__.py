"""Simulating institutions: the synthetic generator, partitioning public datasets by institution, the
in-process transport and runner, the benchmark and the join demonstration. Nothing a hospital runs
imports this package."""
