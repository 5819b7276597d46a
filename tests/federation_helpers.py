"""Tiny-federation settings shared by the federation tests (seconds per round on 2 cores)."""

TINY = dict(synth_spacing=6.0, spacing=6.0, patch_size=16, filters="8,16,32", local_steps=2, batch_size=1)


def tiny_overrides(root, run_dir, **extra):
    return {**TINY, "data_root": str(root), "run_dir": str(run_dir), **extra}
