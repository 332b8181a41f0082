"""A transfer score that knows the paper's noise: the clear steps (a change above twice its
std over seeds), sign agreement with an exact binomial p, rank correlations and the slope
of our changes on the paper's with intervals, and ConvNeXt minus ResNet paired per seed."""

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

import roadmap.results as R
from roadmap import paper, stats
from roadmap.config import PARENTS, SIDE_BRANCHES, STEPS
from tests.conftest import set_top1

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "experiments" / "fashion_mnist_micro"
PAPER = {s: paper.change("r50", s, p)[0] for s, p in PARENTS.items()}
CLEAR = paper.clear_steps("r50", PARENTS)


def per_seed(change_of, seeds=3, noise=0.0, rng_seed=0):
    """step -> seed -> change_of(step) plus Gaussian noise of `noise` points."""
    rng = np.random.default_rng(rng_seed)
    return {s: {k: change_of(s) + noise * rng.standard_normal() for k in range(seeds)} for s in PARENTS}


def test_the_papers_clear_steps_are_those_whose_change_exceeds_twice_its_std():
    assert CLEAR == ["modern_recipe", "stage_ratio", "depthwise_conv", "wider", "inverted_bottleneck",
                     "move_up_depthwise", "kernel_5", "kernel_7", "kernel_9", "kernel_11", "fewer_activations",
                     "separate_downsampling"]
    # patchify_stem: +0.15 against 2 x sqrt(0.18^2 + 0.07^2) = 0.39; modern_recipe: the resnet row has no std
    assert paper.change("r50", "patchify_stem", "stage_ratio") == pytest.approx((0.15, math.hypot(0.18, 0.07)))
    assert paper.change("r50", "modern_recipe", "resnet") == pytest.approx((2.69, 0.07))
    assert paper.clear_steps("r200", PARENTS) == []  # Table 11 gives no std


def test_the_binomial_p_is_the_exact_tail_against_chance():
    assert stats.sign_p(12, 12) == pytest.approx(0.5**12)
    assert stats.sign_p(9, 12) == pytest.approx(sum(math.comb(12, k) for k in range(9, 13)) / 2**12)
    assert stats.sign_p(0, 12) == pytest.approx(1.0)


def test_the_paper_against_itself_agrees_on_every_clear_step():
    t = stats.transfer_of(per_seed(PAPER.get, noise=0.01), PAPER, clear=CLEAR, gain={0: 5.84, 1: 5.8, 2: 5.9},
                       paper_gain=5.84)
    assert t.clear.steps == tuple(CLEAR) and t.clear.agree == 12 and t.clear.sign_p == pytest.approx(0.5**12)
    assert t.clear.spearman.mean > 0.99 and t.clear.kendall.lo > 0.9
    assert t.slope.lo < 1.0 < t.slope.hi and t.slope.mean == pytest.approx(1.0, abs=0.01)
    assert t.gain.mean == pytest.approx(5.8467, abs=1e-3) and t.gain.lo < 5.84 < t.gain.hi


def test_effects_a_third_as_large_scale_by_a_third_and_rank_the_same():
    t = stats.transfer_of(per_seed(lambda s: PAPER[s] / 3, noise=0.02), PAPER, clear=CLEAR)
    assert t.slope.lo < 1 / 3 < t.slope.hi and t.slope.hi < 0.5
    assert t.clear.agree == 12 and t.clear.spearman.lo > 0.9


def test_reversed_effects_disagree_on_every_sign_and_rank():
    t = stats.transfer_of(per_seed(lambda s: -PAPER[s], noise=0.01), PAPER, clear=CLEAR)
    assert t.clear.agree == 0 and t.clear.sign_p == pytest.approx(1.0)
    assert t.clear.spearman.hi < -0.9 and t.all.kendall.hi < -0.8 and t.slope.hi < 0


def test_noise_alone_transfers_nothing():
    t = stats.transfer_of(per_seed(lambda s: 0.0, seeds=10, noise=1.0, rng_seed=0), PAPER, clear=CLEAR)
    assert t.clear.sign_p > 0.05 and t.all.sign_p > 0.05
    assert t.clear.kendall.lo < 0 < t.clear.kendall.hi and t.slope.lo < 0 < t.slope.hi


def test_correlations_on_the_clear_steps_are_scipys_on_their_means():
    runs = R.load(REFERENCE)
    t = R.transfer(runs)
    table = R.step_table(runs).set_index("step").loc[CLEAR]
    assert t.clear.spearman.mean == pytest.approx(scipy_stats.spearmanr(table["delta"], table["paper_delta"]).statistic)
    assert t.clear.kendall.lo <= t.clear.kendall.mean <= t.clear.kendall.hi and t.seeds == 3
    top1 = runs.set_index(["step", "seed"])["top1"]
    by_hand = [top1[("separate_downsampling", k)] - top1[("resnet", k)] for k in range(3)]
    assert t.gain.mean == pytest.approx(np.mean(by_hand)) and t.gain.n == 3
    assert t.paper_gain == pytest.approx(81.97 - 76.13)


def test_one_seed_gives_no_interval_and_no_spread(tmp_path):
    study = tmp_path / "one_seed"
    for step in STEPS:
        shutil.copytree(REFERENCE / step / "seed0", study / step / "seed0")
    runs = R.load(study)
    t = R.transfer(runs)
    assert t.seeds == 1 and all(math.isnan(v) for v in (t.all.spearman.lo, t.clear.kendall.hi, t.gain.lo))
    assert math.isfinite(t.clear.spearman.mean) and math.isfinite(t.gain.mean)
    table = R.step_table(runs)
    assert table["top1_std"].isna().all() and table["delta_lo"].isna().all()
    footer = R.markdown_table(table, runs).split("Δ top-1: the change")[1].splitlines()
    assert any("1 seed: no spread or interval" in line for line in footer)
    signs, clear, ends = (next(line for line in footer if line.startswith(s)) for s in ("Transfer", "On the", "End"))
    assert "one seed: no interval" in signs and "one seed: no interval" in ends
    assert "[" not in signs and "[" not in ends  # no interval over seeds reads as certainty
    assert re.search(r"Spearman [+-]\d\.\d\d, Kendall [+-]\d\.\d\d;", clear)  # the slope's is over steps


def test_the_footer_says_every_answer_on_the_reference_study(tmp_path):
    study = tmp_path / "study"
    shutil.copytree(REFERENCE, study)
    set_top1(study, lambda step, seed: paper.row("r50", step).top1 + 0.1 * (seed == 1) * (step == "gelu"))
    runs, text, _ = R.save_tables(study)
    t = R.transfer(runs)
    assert "On the paper's 12 clear steps" in text and "binomial p" in text and "End to end" in text
    assert t.clear.agree == 12 and t.gain.n == 3 and t.gain.mean == pytest.approx(5.84)
    assert set(SIDE_BRANCHES) <= set(t.all.steps)
