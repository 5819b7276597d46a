"""Simulation: embedded and public datasets, the federation runner and benchmarks."""
