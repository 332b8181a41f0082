"""Trustworthy answers: paired intervals on every step, agreement with the paper, and
designs beyond the single path built from one table of factors."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from scipy import stats as scipy_stats

import roadmap
import roadmap.results as R
from analysis.design_figures import bar_table
from roadmap import factors, stats
from roadmap.cli import read
from roadmap.complexity import complexity
from roadmap.config import SIDE_BRANCHES, STEPS, DesignConfig, compose_overrides
from roadmap.designs import expand
from roadmap.errors import ConfigError
from roadmap.sweep import plan, skipped_lines
from tests.conftest import one_line_error, set_top1

ROOT = Path(__file__).resolve().parent.parent
MAIN_PATH = [s for s in STEPS if s not in SIDE_BRANCHES]
SMOKE = ("+experiment=smoke", "recipe.epochs=1", "train.device=cpu")


# ----------------------------------------------------------------------------- uncertainty on every step


def test_a_t_interval_is_the_hand_computed_one():
    d = [0.9, 1.2, 1.0]
    mean, sd = sum(d) / 3, math.sqrt(sum((x - sum(d) / 3) ** 2 for x in d) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, 2 dof)
    iv = stats.t_interval(d)
    assert (iv.mean, iv.lo, iv.hi, iv.n) == pytest.approx((mean, mean - half, mean + half, 3))
    assert iv.excludes_zero and not stats.t_interval([1.0, -1.0]).excludes_zero
    assert math.isnan(stats.t_interval([2.0]).lo) and not stats.t_interval([2.0]).excludes_zero  # one seed: no interval


def test_each_steps_change_is_paired_by_seed_on_the_reference_study():
    runs = R.load(ROOT / "experiments" / "fashion_mnist_micro")
    table = R.step_table(runs).set_index("step")
    top1 = runs.set_index(["step", "seed"])["top1"]
    by_hand = [top1[("gelu", k)] - top1[("kernel_7", k)] for k in (0, 1, 2)]
    row = table.loc["gelu"]
    assert row["delta"] == pytest.approx(np.mean(by_hand)) and row["delta_pairs"] == 3
    half = scipy_stats.t.ppf(0.975, 2) * np.std(by_hand, ddof=1) / math.sqrt(3)
    assert (row["delta_lo"], row["delta_hi"]) == pytest.approx((np.mean(by_hand) - half, np.mean(by_hand) + half))
    assert bool(row["delta_excludes_zero"]) == (row["delta_lo"] > 0 or row["delta_hi"] < 0)


def test_collapsed_runs_are_marked_and_never_averaged(tmp_path):
    runs = R.load(ROOT / "experiments" / "fashion_mnist_micro")
    runs.loc[(runs["step"] == "gelu") & (runs["seed"] == 1), "collapsed"] = True
    row = R.step_table(runs).set_index("step").loc["gelu"]
    assert row["seeds"] == 2 and row["delta_pairs"] == 2 and "collapsed: 1" in row["statuses"]
    assert R.collapsed(10.0, 10) and R.collapsed(14.9, 10) and not R.collapsed(15.0, 10)


def test_the_transfer_statistics_are_scipys_on_the_per_step_means():
    runs = R.load(ROOT / "experiments" / "fashion_mnist_micro")
    t = R.transfer(runs)
    table = R.step_table(runs).dropna(subset=["delta", "paper_delta"])
    assert len(t.all.steps) == len(table) == 16
    assert t.all.agree == int(((table["delta"] > 0) == (table["paper_delta"] > 0)).sum())
    assert t.significant == int(table["delta_excludes_zero"].sum())
    assert t.all.spearman.mean == pytest.approx(scipy_stats.spearmanr(table["delta"], table["paper_delta"]).statistic)
    assert t.all.kendall.mean == pytest.approx(scipy_stats.kendalltau(table["delta"], table["paper_delta"]).statistic)
    assert t.all.spearman.lo <= t.all.spearman.mean <= t.all.spearman.hi and t.all.kendall.lo <= t.all.kendall.hi
    assert t.seeds == 3


def test_the_table_footer_and_csv_carry_the_intervals_and_the_transfer():
    runs = R.load(ROOT / "experiments" / "fashion_mnist_micro")
    text = R.markdown_table(R.step_table(runs), runs)
    assert "| 95% interval |" in text and "Transfer to ImageNet (r50 column): 10 of 16 steps" in text
    assert {"delta_lo", "delta_hi", "delta_pairs", "delta_excludes_zero"} <= set(R.TABLE_COLUMNS)


def test_main_effects_are_the_least_squares_fit():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, (60, 3)).astype(float)
    y = 80 + 2 * x[:, 0] - x[:, 1] + rng.normal(0, 0.5, 60)
    effects = stats.fit_main_effects(x, y, ["a", "b", "c"])
    design = np.column_stack([np.ones(60), x])
    coef = np.linalg.solve(design.T @ design, design.T @ y)
    assert [e.effect for e in effects] == pytest.approx(list(coef[1:]))
    assert effects[0].lo < 2 < effects[0].hi and effects[1].lo < -1 < effects[1].hi


# ----------------------------------------------------------------------------- the factor table


@pytest.mark.parametrize("regime", ["micro", "r50", "r200"])
def test_applying_the_factors_in_roadmap_order_reproduces_every_step(regime):
    for k, step in enumerate(MAIN_PATH):
        want = roadmap.compose(step, f"regime={regime}")
        got = compose_overrides("+step=resnet", f"regime={regime}", *factors.overrides(factors.levels_at(k)))
        assert OmegaConf.to_container(got.model) == OmegaConf.to_container(want.model), step
        assert OmegaConf.to_container(got.recipe) == OmegaConf.to_container(want.recipe), step
        assert factors.levels_of(OmegaConf.to_container(want)) == factors.levels_at(k), step


def test_reverting_a_factor_reverts_what_requires_it():
    full = {n: True for n in factors.NAMES}
    reverted = factors.revert(full, "inverted_bottleneck")
    assert [n for n in factors.NAMES if not reverted[n]] == ["inverted_bottleneck", "move_up_depthwise", "kernel_7"]
    assert factors.problem({**factors.levels_at(1), "kernel_7": True}).startswith("kernel_7 without move_up_depthwise")


def test_every_factor_that_requires_another_carries_why():
    assert {f.name: (f.requires, f.reason) for f in factors.FACTORS if f.requires or f.reason} == {
        "move_up_depthwise": ("inverted_bottleneck",
                              "moving up is defined on the inverted bottleneck's depthwise conv"),
        "kernel_7": ("move_up_depthwise", "the paper enlarges the moved-up depthwise conv only")}


def designed(name, **kw):
    return expand(DesignConfig(name=name, **kw))


@pytest.mark.parametrize("name,count", [("leave_one_out", 14), ("add_one", 11), ("random", 48)])
def test_every_network_of_each_design_builds_and_counts(name, count, tmp_path):
    from roadmap.designs import write_steps

    nets, skipped = designed(name)
    assert len(nets) == count and len({n.name for n in nets}) == count
    folder = write_steps(nets, tmp_path)
    for net in nets:
        cfg = compose_overrides(f"+step={net.name}", f"hydra.searchpath=[file://{folder}]")
        assert factors.levels_of(OmegaConf.to_container(cfg)) == net.levels
        assert complexity(cfg).params > 0
    if name == "add_one":
        assert {s.name: s.reason.split(":")[0] for s in skipped} == {
            "modern_resnet-plus-move_up_depthwise": "move_up_depthwise without inverted_bottleneck",
            "modern_resnet-plus-kernel_7": "kernel_7 without move_up_depthwise"}


def test_random_networks_are_reproducible_distinct_and_meaningful():
    a, skipped = designed("random", samples=20, seed=3)
    assert [n.name for n in a] == [n.name for n in designed("random", samples=20, seed=3)[0]]
    assert [n.name for n in a] != [n.name for n in designed("random", samples=20, seed=4)[0]]
    assert len({tuple(n.levels.values()) for n in a}) == 20 and all(factors.problem(n.levels) is None for n in a)
    assert all(s.reason for s in skipped)


def test_many_skipped_draws_are_listed_once_per_reason_with_their_count():
    _, skipped = designed("random", samples=48, seed=0)
    lines = skipped_lines(skipped)
    assert len(skipped) > 5 and len(lines) == len({s.reason for s in skipped if "same network" not in s.reason}) + any(
        "same network" in s.reason for s in skipped)
    assert sum(int(line.split(" draws,")[0]) for line in lines) == len(skipped)
    assert skipped_lines(skipped[:2]) == [f"{s.name}: {s.reason}" for s in skipped[:2]]


def test_a_design_restricted_to_some_factors():
    nets, _ = designed("leave_one_out", factors=["gelu", "layer_norm"])
    assert [n.name for n in nets] == ["convnext", "convnext-minus-gelu", "convnext-minus-layer_norm"]


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args,message", [
    (("+design=grid",), "unknown design 'grid': choose one of add_one, leave_one_out, path, random"),
    (("+design=random", "design.samples=0"), "design.samples=0 is not valid"),
    (("+design=leave_one_out", "design.factors=[gelu,swish]"), "design.factors has 'swish', not a factor"),
    (("+design=leave_one_out", "+step=gelu"), "+design= chooses the networks and +step= names them"),
])
def test_a_bad_design_is_refused_before_anything_trains(args, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        plan(read([*args, f"hydra.sweep.dir={tmp_path / 's'}"], ""))
    assert message in str(err.value)
    assert not (tmp_path / "s").exists()


def test_a_bad_design_from_the_command_line_is_one_line():
    one_line_error(
        subprocess.run([sys.executable, "-m", "roadmap.sweep", "+design=grid"], capture_output=True, text=True),
        "unknown design 'grid'",
    )


# ----------------------------------------------------------------------------- smoke sweeps of each design


def design_sweep(tmp_path, *args):
    study = tmp_path / "study"
    out = subprocess.run([sys.executable, "-m", "roadmap.sweep", *args, *SMOKE, f"hydra.sweep.dir={study}"],
                         capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    set_top1(study, lambda step, seed: 60.0 + len(step) % 7 + seed)  # smoke runs may end at chance: never averaged
    plots = subprocess.run(
        [sys.executable, "-m", "analysis.plots", str(study)], capture_output=True, text=True, cwd=ROOT
    )
    assert plots.returncode == 0, plots.stderr[-3000:]
    return study, out


@pytest.mark.slow
def test_a_leave_one_out_sweep_measures_each_factor_against_convnext(tmp_path):
    study, _ = design_sweep(tmp_path, "+design=leave_one_out", "design.factors=[gelu,layer_norm]", "seed=0,1")
    table = pd.read_csv(study / "table.csv").set_index("step")
    assert list(table.index) == ["convnext", "convnext-minus-gelu", "convnext-minus-layer_norm"]
    assert (
        table.loc["convnext-minus-gelu", "builds_on"] == "convnext"
        and table.loc["convnext-minus-gelu", "delta_pairs"] == 2
    )
    runs = R.load(study)
    assert not runs.loc[runs["step"] == "convnext-minus-gelu", "factor.gelu"].any()
    assert (study / "figures" / "leave_one_out.png").stat().st_size > 5000


@pytest.mark.slow
def test_an_add_one_sweep_lists_what_it_skips_and_draws_its_bars(tmp_path):
    study, out = design_sweep(tmp_path, "+design=add_one", "design.factors=[patchify_stem,kernel_7]")
    assert "not trained: modern_resnet-plus-kernel_7: kernel_7 without move_up_depthwise" in out.stdout
    assert sorted(pd.read_csv(study / "results.csv")["step"]) == ["modern_resnet", "modern_resnet-plus-patchify_stem"]
    assert (study / "figures" / "add_one.png").exists()


@pytest.mark.slow
def test_a_random_sweep_draws_its_edfs_and_main_effects(tmp_path):
    study, _ = design_sweep(tmp_path, "+design=random", "design.samples=6", "design.factors=[gelu,layer_norm,wider]")
    runs = R.load(study)
    assert len(runs) == 6 and len(set(runs["step"])) == 6  # 6 of the 8 networks that three factors make
    for name in ("edf", "macs", "effects"):
        assert (study / "figures" / f"{name}.png").exists()


@pytest.mark.slow
def test_the_four_answers_stand_side_by_side_per_factor(tmp_path):
    few = "design.factors=[gelu,layer_norm]"
    studies = []
    for name, extra in (("leave_one_out", "seed=0,1"), ("add_one", "seed=0,1"), ("random", "design.samples=4")):
        study = tmp_path / name
        out = subprocess.run([sys.executable, "-m", "roadmap.sweep", f"+design={name}", few, extra, *SMOKE,
                              f"hydra.sweep.dir={study}"], capture_output=True, text=True, cwd=ROOT, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
        set_top1(study, lambda step, seed: 60.0 + len(step) % 7 + seed)
        studies.append(str(study))
    out = subprocess.run([sys.executable, "-m", "analysis.design_figures",
                          str(ROOT / "experiments" / "fashion_mnist_micro"), *studies, str(tmp_path / "figures")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    table = pd.read_csv(tmp_path / "figures" / "factors_summary.csv")
    gelu = table[table["factor"] == "gelu"].set_index("answer")
    assert set(gelu.index) == {"change on the path", "cost of leaving it out", "gain of adding it alone",
                               "main effect (random)"}
    assert (tmp_path / "figures" / "factors_summary.png").stat().st_size > 5000


@pytest.mark.parametrize("design, sign", [("add_one", 1), ("leave_one_out", -1)])
def test_each_bar_is_the_factors_worth_inside_its_interval(design, sign):
    table = R.step_table(R.load(ROOT / "experiments" / f"fashion_mnist_micro_{design}"))
    bars = bar_table(table, design).set_index("factor")
    network = {"add_one": "modern_resnet-plus-{}", "leave_one_out": "convnext-minus-{}"}[design]
    for factor, bar in bars.iterrows():
        row = table.set_index("step").loc[network.format(factor)]
        assert bar["mean"] == pytest.approx(sign * row["delta"])
        assert (bar["lo"], bar["hi"]) == pytest.approx(tuple(sorted((sign * row["delta_lo"], sign * row["delta_hi"]))))
        assert bar["lo"] < bar["mean"] < bar["hi"]
