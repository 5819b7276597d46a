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

    from client.site_round import SiteRound
    from server.server_app import initial_model
    from uharmony.config import RunConfig
    from uharmony.federated import ModelRoles, to_numpy

    after_import = _rss_mib()
    cfg = RunConfig.from_flwr(overrides)
    model, _ = initial_model(cfg)
    roles = ModelRoles(model, cfg.strategy)
    job = SiteRound({"partition-id": 0}, cfg, json.dumps(model.spec), cfg.strategy, None)
    job.load(to_numpy(model.state_dict(), roles.global_keys()))
    after_setup = _rss_mib()
    job.train(1, cfg.lr, cfg.local_steps, 0.0)
    job.evaluate()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rss_after_imports_mib": round(after_import, 1), "rss_after_setup_mib": round(after_setup, 1),
                      "peak_rss_mib": round(peak, 1), "train_cases": job.data.num_train_cases,
                      "patch": cfg.patch_size, "batch": cfg.batch_size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
