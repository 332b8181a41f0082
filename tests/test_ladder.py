"""The proxy ladder: rungs as presets that move one knob from the default, and the ladder's
table and figure over studies of the whole path (synthetic rungs: the reference study's
runs with their top-1s and knobs rewritten, so nothing trains)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from roadmap import paper
from roadmap.config import STEPS, compose
from tests.conftest import one_line_error

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "experiments" / "fashion_mnist_micro"


def rung(tmp, name, top1_of, epochs=3, seeds=(0, 1, 2), regime=None):
    """A copy of the reference study's runs as study `name`: top-1 top1_of(step, seed), `epochs`."""
    study = tmp / name
    for run in REFERENCE.glob("*/seed*"):
        seed = int(run.name[4:])
        if seed not in seeds:
            continue
        target = study / run.parent.name / run.name
        shutil.copytree(run, target)
        summary = json.loads((target / "summary.json").read_text())
        summary.update(top1=top1_of(run.parent.name, seed), epochs=epochs, regime=regime or summary["regime"])
        (target / "summary.json").write_text(json.dumps(summary))
        cfg = yaml.safe_load((target / "config.yaml").read_text())
        cfg["recipe"]["epochs"] = epochs
        cfg["regime"]["name"] = regime or cfg["regime"]["name"]
        (target / "config.yaml").write_text(yaml.safe_dump(cfg))
    return study


def like_the_paper(step, seed):
    return paper.row("r50", step).top1 + 0.05 * seed


def ladder(*args):
    return subprocess.run([sys.executable, "-m", "analysis.ladder", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT)


@pytest.mark.parametrize("preset, knob, value", [
    ("ladder_epochs1", "recipe.epochs", 1), ("ladder_epochs10", "recipe.epochs", 10),
    ("ladder_64px", "data.image_size", 64),
])
def test_each_rung_moves_one_knob_of_the_default_study(preset, knob, value):
    default, moved = compose("gelu"), compose("gelu", f"+experiment={preset}")
    section, key = knob.split(".")
    assert moved[section][key] == value != default[section][key]
    assert moved.study == f"fashion_mnist_micro_{preset.removeprefix('ladder_')}"
    same = {k: v for k, v in moved.recipe.items() if k != key}
    assert same == {k: v for k, v in default.recipe.items() if k != key} or section != "recipe"


def test_the_64px_rung_resizes_the_garments_bicubic_and_keeps_the_default_framing():
    cfg = compose("gelu", "+experiment=ladder_64px")
    assert (cfg.data.image_size, cfg.data.resize) == (64, 56)  # 28 in 32 at twice the resolution


def test_the_ladder_table_and_figure_of_three_rungs(tmp_path):
    default = rung(tmp_path, "fashion_mnist_micro", lambda s, k: 80 + 0.3 * k - 0.1 * STEPS.index(s))
    better = rung(tmp_path, "fashion_mnist_micro_epochs10", like_the_paper, epochs=10)
    partial = rung(tmp_path, "fashion_mnist_micro_epochs1", like_the_paper, epochs=1, seeds=(0, 1))
    shutil.rmtree(partial / "gelu" / "seed1")  # seed 1 unfinished: the rung is drawn from seed 0 alone
    out = ladder(default, better, partial, "--out", tmp_path / "figures")
    assert out.returncode == 0, out.stderr
    frame = pd.read_csv(tmp_path / "figures" / "ladder.csv").set_index("rung")
    assert list(frame.index) == ["default", "epochs10", "epochs1"]
    assert frame.loc["epochs10", "cost_x_default"] == pytest.approx(10 / 3)
    assert frame.loc["epochs1", "cost_x_default"] == pytest.approx(1 / 3)
    assert frame.loc["epochs10", "clear_agree"] == 12 and frame.loc["epochs10", "kendall"] == pytest.approx(1.0)
    assert frame.loc["epochs10", "slope"] == pytest.approx(1.0)
    assert frame.loc["epochs1", "partial"] and frame.loc["epochs1", "seeds"] == 1
    assert pd.isna(frame.loc["epochs1", "kendall_lo"]) and pd.isna(frame.loc["epochs1", "gain_lo"])  # one seed
    assert not frame.loc["epochs10", "partial"] and frame.loc["epochs10", "gain"] == pytest.approx(5.84)
    assert (tmp_path / "figures" / "ladder.png").stat().st_size > 10_000
    assert "partial" in out.stderr and "epochs1" in out.stderr
    assert frame.loc["epochs10", "better"] and not frame.loc["default", "better"]


def test_the_default_gives_way_only_to_a_cheap_rung_that_transfers_measurably_better_on_as_many_seeds(tmp_path):
    from analysis import ladder as L

    default = rung(tmp_path, "fashion_mnist_micro", lambda s, k: 80 + 0.3 * k - 0.1 * STEPS.index(s), seeds=(0, 1))
    cheap = rung(tmp_path, "fashion_mnist_micro_epochs1", like_the_paper, epochs=1, seeds=(0, 1))
    dear = rung(tmp_path, "fashion_mnist_micro_epochs10", like_the_paper, epochs=10, seeds=(0, 1))
    again = rung(tmp_path, "fashion_mnist_micro_retrain", like_the_paper, seeds=(0, 1))  # the default's setting
    early = rung(tmp_path, "fashion_mnist_micro_epochs2", like_the_paper, epochs=2, seeds=(0,))  # one seed so far
    frame = L.table(L.read_ladder([default, cheap, dear, again, early])[0])
    assert list(frame["better"]) == [False, True, True, True, True]
    assert L.decide(frame) == L.Decision(successors=["epochs1"], not_better=[], undecided=["epochs2"],
                                         dearer=["epochs10"], noise_floor=["retrain"])
    stays = L.decide(frame[frame["rung"] != "epochs1"])
    assert stays.successors == [] and stays.sentence().startswith("The default stays")


def test_a_ladder_without_the_default_study_is_refused_in_one_line(tmp_path):
    rung_only = rung(tmp_path, "fashion_mnist_micro_epochs10", like_the_paper, epochs=10, seeds=(0,))
    one_line_error(ladder(rung_only, "--out", tmp_path / "f"), "no default study among the scored rungs")
    assert not (tmp_path / "f").exists()


def test_a_ladder_of_studies_of_different_regimes_is_refused(tmp_path):
    a = rung(tmp_path, "fashion_mnist_micro", like_the_paper, seeds=(0,))
    b = rung(tmp_path, "other", like_the_paper, seeds=(0,), regime="r50")
    one_line_error(ladder(a, b, "--out", tmp_path / "f"), "differ in regime")
    assert not (tmp_path / "f").exists()


def test_a_study_of_other_steps_or_a_missing_path_is_refused_in_one_line(tmp_path):
    a = rung(tmp_path, "fashion_mnist_micro", like_the_paper, seeds=(0,))
    design = rung(tmp_path, "design", like_the_paper, seeds=(0,))
    shutil.move(design / "gelu", design / "my_step")
    summary = design / "my_step" / "seed0" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "step": "my_step"}))
    one_line_error(ladder(a, design, "--out", tmp_path / "f"), "does not train the paper's path", "my_step")
    one_line_error(ladder(a, tmp_path / "nowhere", "--out", tmp_path / "f"), "nowhere", "is not a directory")


def test_a_rung_with_no_complete_seed_is_named_in_the_table_not_scored(tmp_path):
    from analysis import ladder as L
    from roadmap import results as R

    default = rung(tmp_path, "fashion_mnist_micro", like_the_paper, seeds=(0,))
    started = rung(tmp_path, "fashion_mnist_micro_64px", like_the_paper, seeds=(0, 1))
    for step in STEPS[6:]:
        shutil.rmtree(started / step)  # seed-major and stopped part-way: 6 steps of each seed so far
    out = ladder(default, started, "--out", tmp_path / "f")
    assert out.returncode == 0, out.stderr
    assert list(pd.read_csv(tmp_path / "f" / "ladder.csv")["rung"]) == ["default"]
    assert "Not scored yet: 64px:" in (tmp_path / "f" / "ladder.md").read_text()
    assert L.not_scored(R.load(started)).endswith("(12 runs so far: 6 of seed 0, 6 of seed 1; 12 completed)")


def test_a_rung_with_no_complete_seed_is_skipped_and_nothing_to_draw_exits_2(tmp_path):
    a = rung(tmp_path, "fashion_mnist_micro", like_the_paper, seeds=(0,))
    shutil.rmtree(a / "gelu")
    out = ladder(a, "--out", tmp_path / "f")
    assert out.returncode == 2 and "no seed on which all 17 steps of the path completed" in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: ")


def test_a_one_seed_rung_is_read_against_what_one_seed_of_the_default_setting_shows(tmp_path):
    from analysis import ladder as L

    def noisy(step, seed):  # the paper's ranking plus a seed-dependent wobble on every step
        return like_the_paper(step, seed) + 0.4 * ((STEPS.index(step) * (seed + 2)) % 3 - 1)

    default = rung(tmp_path, "fashion_mnist_micro", noisy, seeds=(0, 1))
    again = rung(tmp_path, "fashion_mnist_micro_retrain", noisy, seeds=(2,))
    one = rung(tmp_path, "fashion_mnist_micro_64px", lambda s, k: 80.0 - 3 * (s == STEPS[-1]), seeds=(0,))
    read = L.read_ladder([default, again, one])[0]
    spread, frame = L.one_seed_range(read), L.table(read)
    assert list(zip(spread["rung"], spread["seed"])) == [("default", 0), ("default", 1), ("retrain", 2)]
    alone = L.table(L.read_ladder([rung(tmp_path / "s1", "fashion_mnist_micro", noisy, seeds=(1,))])[0]).iloc[0]
    assert spread.set_index("seed").loc[1, "kendall"] == pytest.approx(alone["kendall"])  # each seed scored alone
    lo, hi = spread[list(L.SCORES)].min(), spread[list(L.SCORES)].max()
    assert lo["clear_agree"] < hi["clear_agree"]  # the seeds disagree: a range, not a point
    flat = frame.set_index("rung").loc["64px"]
    assert L.outside(flat, lo, hi)["gain"] == "below" and L.outside(flat, lo, hi)["kendall"] == "below"
    assert L.outside(frame.set_index("rung").loc["retrain"], lo, hi) == {}
    out = ladder(default, again, one, "--out", tmp_path / "f")
    assert out.returncode == 0, out.stderr
    assert len(pd.read_csv(tmp_path / "f" / "ladder_one_seed.csv")) == 3
