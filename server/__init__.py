"""Flower ServerApp (coordinator side): role-aware aggregation, checkpoints, run logs."""
