"""``uharmony-evidence``: the pre-registered confirmatory comparison behind docs/results.md."""
