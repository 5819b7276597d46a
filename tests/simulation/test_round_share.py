"""``python -m simulation.round_share``: the share of a site's round that is not the training step."""

import json

from simulation.round_share import main


def test_round_share_splits_a_sites_round_and_records_it(tiny_federation, tmp_path):
    out = tmp_path / "share"
    rec = main(["--rounds", "2", "--out", str(out), "--set", f"data-root='{tiny_federation}'", "spacing=6.0",
                "patch-size=16", "filters='8,16,32'", "local-steps=2"])  # fmt: skip
    assert rec["local_steps"] == 2 and rec["patch"] == 16 and rec["rounds"] == 2
    assert rec["setup_s"] > 0 and rec["train_s"] > rec["batches_s"] > 0 and rec["steps_alone_s"] > 0
    assert 0 < rec["not_step_share"] < 1  # set-up and the pipeline cost something; the steps most of the rest
    assert rec["set"]["local-steps"] == 2 and "run-dir" not in rec["set"] and rec["machine"]
    assert (out / "run").is_dir()  # the site's state went to the study's folder, not runs/latest
    assert json.loads((out / "results.jsonl").read_text().splitlines()[-1])["train_s"] == rec["train_s"]
