"""The coordinator side: Flower ServerApp over one round engine, role-aware aggregation, PKI, SuperLink."""
