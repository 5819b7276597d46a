"""Peak memory of one client round, measured in a fresh process (``python -m simulation.bench.client_memory JSON``).

Prints one JSON line: resident set size after imports, after loading the site's data and model, and the
process's peak (``ru_maxrss``) after one training round and one evaluation, in MiB.
"""

from __future__ import annotations

import json
import resource
import sys


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    overrides = json.loads(argv[0])
    import torch  # noqa: F401  (counted in the baseline)

    from simulation.embedded import ensure_federation
    from uharmony.data import load_federation
    from uharmony.federation.config import RunConfig
    from uharmony.federation.federated import ModelRoles, global_state_of
    from uharmony.federation.site_round import SiteRound

    after_import = _rss_mib()
    cfg = RunConfig.from_flwr(overrides)
    model = cfg.build_model(len(load_federation(ensure_federation(cfg, progress=False)).sites))
    job = SiteRound({"partition-id": 0}, cfg, model.spec, cfg.strategy)
    job.load(global_state_of(model, ModelRoles(model, cfg.strategy)))
    after_setup = _rss_mib()
    job.train(1, cfg.lr, cfg.local_steps, 0.0, cfg.seed)
    job.evaluate()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "rss_after_imports_mib": round(after_import, 1),
                "rss_after_setup_mib": round(after_setup, 1),
                "peak_rss_mib": round(peak, 1),
                "train_cases": job.data.num_train_cases,
                "patch": cfg.patch_size,
                "batch": cfg.batch_size,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
