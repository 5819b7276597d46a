"""Faults in a real deployment on 127.0.0.1 (``simulation.deployment``: the coordinator's SuperLink behind its
gateway, three hospitals' SuperNodes, TLS), one run of nine rounds:

1. a SuperNode is killed (SIGKILL) during round 2: the round completes with the two others (min-sites 2),
   and the site, restarted at once with the same key and state folder, trains again (its daemon retries
   while the SuperLink still holds the dead connection);
2. a site's data folder disappears after round 2: its replies fail, counted as rejected, the rounds go on;
3. the coordinator (SuperLink, gateway, app registry and the ServerApp) is killed once the restarted site
   trained again, and restarted with its database: the run resumes from the last checkpoint and finishes,
   every round recorded once.
"""

import json
import shutil
import signal
import time

import pytest
import torch

from simulation.deployment import TINY_RUN, LocalConsortium, final_status, records, wait_for
from uharmony.records.checkpoint import load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("flower-runtimes")]  # one worker, in turn


def _trained(run_dir, rnd):
    return next((r for r in records(run_dir) if r.get("event") == "train" and r["round"] == rnd), None)


def _any_with_sites(run_dir, after):
    """The first round after ``after`` in which any site trained."""
    return next((r for r in records(run_dir) if r.get("event") == "train" and r["round"] > after and r["sites"]), None)


def _with(run_dir, site, after):
    """The first round after ``after`` that ``site`` trained in."""
    return next(
        (r for r in records(run_dir) if r.get("event") == "train" and r["round"] > after and site in r["sites"]), None
    )


def test_a_killed_site_a_lost_data_folder_and_a_killed_superlink_are_survived(tmp_path):
    # a restarted site may need several rounds to be back: a process start, Flower's reconnection and its worker's
    # imports, on a machine whose other cores run the rest of the suite (with 9 rounds it once came back at the last)
    run_dir, rounds = tmp_path / "run", 12
    figures = {}
    with LocalConsortium(tmp_path) as c:
        c.consortium(3, retries=1000, wait=600)  # SuperNodes keep trying while the SuperLink is down
        cfg = (
            f"num-server-rounds={rounds} {TINY_RUN} eval-every={rounds} num-domains=3 min-sites=2 round-timeout=30 "
            f"profile-timeout=30 run-dir='{run_dir}'"
        )
        run = c.submit(cfg)
        wait_for(lambda: _trained(run_dir, 1), 600, "round 1", run)
        c.kill("s3")  # 1. a hospital's SuperNode dies with round 2 under way
        killed = time.time()
        r2 = wait_for(lambda: _trained(run_dir, 2), 300, "round 2 without s3", run)
        figures["round 2 done without the killed site (s after the kill)"] = round(time.time() - killed, 1)
        assert sorted(r2["sites"]) == ["s1", "s2"]
        c.start_site("s3", tmp_path / "s3.toml")  # the same key and state folder
        restarted = time.time()
        shutil.move(tmp_path / "data" / "s2", tmp_path / "s2-gone")  # 2. s2's data folder disappears
        back = wait_for(lambda: _with(run_dir, "s3", 2), 400, "s3 training again", run)
        figures["s3 trains again (s after its restart)"] = round(time.time() - restarted, 1)
        assert back["round"] < rounds, figures
        assert any("client error" in r["reason"] and "s2" in r["reason"] for r in back["rejected"]), back
        ckpt = run_dir / "checkpoints" / f"round-{back['round']:03d}.pt"
        wait_for(ckpt.exists, 120, "the checkpoint", run)
        c.kill("coordinator-run", signal.SIGTERM)
        c.kill("coordinator")  # 3. SuperLink, gateway, registry and the ServerApp die, the next round under way
        killed = time.time()
        before = load_checkpoint(run_dir / "checkpoints")
        c.start_coordinator()  # the same database, ports, registry and published app
        c.wait_superlink()
        resumed = c.submit(cfg + " resume=true", "resumed-run")
        # the first round after the restart that a site trained in (on a loaded machine the SuperNodes may take
        # longer than one round-timeout to reconnect: such a round keeps the model, recorded with no site)
        after = wait_for(
            lambda: _any_with_sites(run_dir, before["round"]), 300, "a trained round after the restart", resumed
        )
        figures["first trained round after the coordinator was killed (s)"] = round(time.time() - killed, 1)
        status = final_status(c, resumed, "resumed-run")
        assert status["status"] == "finished:completed", status
    recs = records(run_dir)
    assert after["sites"] and "s2" not in after["sites"]  # s2 still has no data
    assert any(
        "s3" in r["sites"] for r in recs if r.get("event") == "train" and r["round"] > before["round"]
    )  # s3 from its state folder
    assert [r["round"] for r in recs if r.get("event") == "train"] == list(range(1, rounds + 1))  # each once
    info = json.loads((run_dir / "run.json").read_text())
    assert [a["resumed-after-round"] for a in info["attempts"]] == [None, before["round"]]
    final = load_checkpoint(run_dir, "final_model.pt")
    assert final["round"] == rounds and final["extra"]["run-id"] == before["extra"]["run-id"]
    assert any(not torch.equal(final["state"][k], v) for k, v in before["state"].items())  # trained on from it
    print("fault figures:", json.dumps(figures))
