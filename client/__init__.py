"""Flower ClientApp (site side): thin glue over uharmony and simulation.datasets."""
