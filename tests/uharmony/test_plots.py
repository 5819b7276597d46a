"""The figures a reader looks at, read back from the real matplotlib figures of real runs: ``dice_per_round.png``
(a loss panel, one line per site, labels that fit the strategy, a legend beside the data) and label overlays with
one fixed colour per class and a legend."""

import numpy as np
import pytest
from matplotlib.colors import to_rgba

from simulation.bench.report import plot_overlays
from simulation.runner import run
from simulation.synth.montage import site_montage
from tests.conftest import tiny_overrides
from uharmony.records.plots import CLASS_COLOURS, label_rgba
from uharmony.records.runlog import RunLog


@pytest.fixture(scope="module")
def plain_run(tiny_federation, tmp_path_factory):
    """FedAvg (a plain head), 3 rounds evaluated once, after the last (as the main job's default), TensorBoard on."""
    run_dir = tmp_path_factory.mktemp("plain") / "run"
    over = tiny_overrides(tiny_federation, run_dir, num_server_rounds=3, eval_every=3, local_steps=1)
    run({**over, "strategy": "fedavg", "tensorboard": True})
    return run_dir


def _panels(fig):
    dice = next(ax for ax in fig.axes if "Dice" in ax.get_ylabel())
    loss = next(ax for ax in fig.axes if "loss" in ax.get_ylabel().lower())
    return dice, loss


def _legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None, "no legend"
    return [t.get_text() for t in legend.get_texts()]


def _outside(fig, ax) -> bool:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # (a closed figure has lost its canvas) laid out again as when it was saved
    canvas.draw()
    renderer = canvas.get_renderer()
    return ax.get_legend().get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1


def test_dice_per_round_of_a_plain_head_run_evaluated_once(plain_run, tmp_path, saved_figures):
    records = RunLog(plain_run).records()
    assert RunLog(plain_run).plot(tmp_path / "d.png") == tmp_path / "d.png"
    fig = saved_figures[-1]
    dice, loss = _panels(fig)
    losses = [r["train-loss"] for r in records if r.get("event") == "train"]
    assert len(losses) == 3 and list(loss.lines[0].get_ydata()) == pytest.approx(losses)  # the loss curve
    texts = _legend_texts(dice)
    assert sorted(t.split(":")[0] for t in texts if t.startswith("site ")) == ["site 1", "site 2", "site 3", "site 4"]
    assert len(texts) == 5 and not any(w in t for t in texts for w in ("gated", "oracle", "expert", "gate"))
    low, high = dice.get_xlim()
    assert low <= 1 and high >= 3  # the single evaluation sits on the run's rounds, not on an axis 2.9-3.1
    assert all(float(t).is_integer() for t in dice.get_xticks() if low <= t <= high)
    assert "evaluated after round 3 only" in dice.get_title(loc="left")
    assert _outside(fig, dice)  # the legend does not cover the data
    title = fig.get_suptitle()
    assert "fedavg" in title and records[0]["run-id"][:8] in title and "4 sites" in title


def test_dice_per_round_of_a_gated_run_has_one_line_per_site(trained_run, tmp_path, saved_figures):
    RunLog(trained_run).plot(tmp_path / "d.png")
    fig = saved_figures[-1]
    dice, loss = _panels(fig)
    texts = _legend_texts(dice)
    assert sum(t.startswith("site ") for t in texts) == 4  # not one per site and mode
    assert any(t.startswith("mean, dataset-free") for t in texts) and any(
        t.startswith("mean, own expert") for t in texts
    )
    site_lines = [ln for ln in dice.lines if ln.get_label().startswith("site ")]
    assert all(list(ln.get_xdata()) == [1, 2] for ln in site_lines)  # over the rounds
    assert "dataset-free" in dice.get_title(loc="left") and len(loss.lines) == 1
    assert _outside(fig, dice)


def test_tensorboard_tags_fit_the_head(plain_run, trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(plain_run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert "dice/mean" in tags and not {"dice/gated", "dice/oracle"} & tags
    assert "dice-site-1/WT" in tags and not any(t.endswith(("-gated", "-oracle")) for t in tags)


def test_label_colours_are_fixed_per_class_whatever_the_protocol():
    lab = np.array([[0, 1], [2, 4]])
    rgba = label_rgba(lab, "output", alpha=1.0)
    assert rgba[0, 0, 3] == 0  # background transparent
    assert tuple(rgba[1, 1]) == to_rgba(CLASS_COLOURS["enhancing"]) and tuple(rgba[0, 1]) == to_rgba("#e41a1c")
    post_op = label_rgba(np.array([[3, 4]]), "brats2024", alpha=1.0)  # BraTS 2024: 3 enhancing, 4 cavity
    assert tuple(post_op[0, 0]) == to_rgba(CLASS_COLOURS["enhancing"])
    assert tuple(post_op[0, 1]) == to_rgba(CLASS_COLOURS["resection cavity"])


def test_benchmark_overlays_have_a_label_legend(tmp_path, saved_figures):
    image = np.random.default_rng(0).normal(size=(16, 16))
    truth = np.zeros((16, 16), np.uint8)
    truth[4:12, 4:12], truth[6:10, 6:10], truth[7:9, 7:9] = 2, 4, 1
    pred = truth.copy()
    pred[0:3, 0:3] = 3  # a resection cavity
    for name, lab in (("fedavg", truth), ("uharmony/gated", pred)):
        np.savez(tmp_path / f"{name.replace('/', '-')}.npz", **{"1__image": image, "1__truth": truth, "1__pred": lab})
    files = {"fedavg": tmp_path / "fedavg.npz", "uharmony/gated": tmp_path / "uharmony-gated.npz"}
    assert plot_overlays(files, tmp_path / "o.png") == tmp_path / "o.png"
    fig = saved_figures[-1]
    texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert texts == ["1 necrotic core", "2 oedema", "4 enhancing", "3 resection cavity"]


def test_the_synthetic_montage_names_its_label_colours(tiny_join_federation, tmp_path, saved_figures):
    site_montage(tiny_join_federation, tmp_path / "m.png")
    texts = {t.get_text() for legend in saved_figures[-1].legends for t in legend.get_texts()}
    assert {"oedema", "enhancing", "resection cavity"} <= texts <= set(CLASS_COLOURS)


@pytest.mark.parametrize("codes, edges", [(("R", "A"), "L R A P"), (("L", "P"), "R L P A")])
def test_a_slice_names_the_patients_directions_at_its_edges(codes, edges):
    """New-user trial: the segmentation overlay gave no orientation; a radiologist needs to know which side is left."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from uharmony.records.plots import draw_labels

    fig, ax = plt.subplots()
    draw_labels(ax, np.zeros((8, 8)), np.zeros((8, 8), np.uint8), codes=codes)
    marks = {t.get_text(): t.get_position() for t in ax.texts}
    left, right, top, bottom = edges.split()
    assert marks[left][0] < 0.5 < marks[right][0] and marks[top][1] > 0.5 > marks[bottom][1]
    plt.close(fig)
