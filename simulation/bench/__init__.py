"""``uharmony-bench``: the evidence behind docs/results.md (methods, unseen site, ablations, costs, scale)."""
