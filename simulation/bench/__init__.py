"""``uharmony-bench``: the S0/S2 study behind docs/results-s2.md (methods, unseen site, ablations, costs, scale)."""
