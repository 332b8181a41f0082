"""Effective receptive field and corruption robustness from a study's checkpoints
(analysis.erf, analysis.robustness, analysis/corruptions.py) and their columns in table.md."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

import roadmap
import roadmap.results as R
from analysis import checkpoints, corruptions, erf, robustness
from roadmap import rundir
from roadmap.data import load_fashion_mnist
from roadmap.errors import ResultsError
from roadmap.rundir import RunSummary, Status

ROOT = Path(__file__).resolve().parent.parent
TWO_SEEDS = ("resnet", "kernel_7", "gelu")  # the smoke study's steps with two seeds; the others have one


def seeds_of(step):
    return (0, 1) if step in TWO_SEEDS else (0,)


def run_cli(main, argv, capsys):
    """A tool's main(): its exit code, stdout and stderr."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def ones_conv(k):
    conv = nn.Conv2d(1, 1, k, padding=k // 2, bias=False)
    nn.init.ones_(conv.weight)
    return conv


# ----------------------------------------------------------------------------- ERF, by hand


@pytest.mark.parametrize("k", [3, 5, 7])
def test_the_erf_of_one_kxk_conv_is_its_kernel_and_its_squares_are_those_counted_by_hand(k):
    m = erf.erf_map(ones_conv(k), torch.rand(2, 1, 33, 33) + 0.1)
    inside = torch.zeros(33, 33)
    inside[16 - k // 2:17 + k // 2, 16 - k // 2:17 + k // 2] = 2.0  # one per image, two images
    assert torch.allclose(m, inside)
    # a k x k block of equal weights: the square of side j holds j^2 / k^2 of it
    by_hand = {3: (3, 3, 3), 5: (3, 5, 5), 7: (5, 5, 7)}[k]  # 20%, 50%, 99%
    got = erf.sizes(m)
    assert (got["erf20_side"], got["erf50_side"], got["erf99_side"]) == by_hand
    assert got["erf50_area"] == pytest.approx(by_hand[1] ** 2 / 33 ** 2)


def test_the_erf_of_two_stacked_3x3_convs_is_the_5x5_triangle_counted_by_hand():
    m = erf.erf_map(nn.Sequential(ones_conv(3), ones_conv(3)), torch.rand(1, 1, 21, 21) + 0.1)
    tri = torch.tensor([1.0, 2, 3, 2, 1])
    expected = torch.zeros(21, 21)
    expected[8:13, 8:13] = torch.outer(tri, tri)  # 81 in all: 9 at the centre, 49 in the 3x3, 81 in the 5x5
    assert torch.allclose(m, expected)
    got = erf.sizes(m)
    assert (got["erf20_side"], got["erf50_side"], got["erf99_side"]) == (3, 3, 5)  # 11%, 60%, 100%


def test_the_erf_squares_centre_on_the_fields_centre_of_mass_not_the_images():
    m = torch.zeros(32, 32)
    m[20:23, 9:12] = 1.0  # a 3x3 field centred on (21, 10)
    assert erf.centre_of_mass(m) == (21, 10)
    assert erf.sizes(m)["erf99_side"] == 3


# ----------------------------------------------------------------------------- corruptions


@pytest.fixture(scope="module")
def images():
    _, test = load_fashion_mnist(None, 32, download=False)
    return test.subset(12, seed=0).images


@pytest.mark.parametrize("name", corruptions.names())
def test_every_corruption_at_every_severity_changes_the_images_and_5_more_than_1(images, name):
    x = images.double() / 255
    change = {}
    for s in corruptions.SEVERITIES:
        y = corruptions.corrupt(x, name, s, torch.Generator().manual_seed(s))
        assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
        assert (y * 255 - (y * 255).round()).abs().max() < 1e-6  # 8-bit levels, as CIFAR-10-C stores them
        change[s] = float((y - x).abs().mean()) * 255
        assert change[s] > 0.5, f"{name} at severity {s} moves a pixel by {change[s]:.2f}/255 on average"
    if name in corruptions.NOT_MONOTONE:  # make_cifar_c.py's own parameters: see the note there
        assert change[5] < change[1]
    else:
        assert change[5] > change[1], change


def test_a_corruption_that_cannot_apply_to_grey_images_is_skipped_not_faked(images):
    assert {"saturate", "frost"} <= set(corruptions.SKIPPED)
    assert not set(corruptions.SKIPPED) & set(corruptions.FAMILIES)
    with pytest.raises(ValueError, match="saturate is skipped: .*grey"):
        corruptions.corrupt(images.double() / 255, "saturate", 1, torch.Generator())


def test_the_corrupted_sets_are_uint8_and_drawn_from_fixed_seeds(images):
    sets = corruptions.corrupted_sets(images[:2], seed=0)
    assert set(sets) == {(c, s) for c in corruptions.FAMILIES for s in corruptions.SEVERITIES}
    assert all(x.dtype == torch.uint8 and x.shape == images[:2].shape for x in sets.values())
    i = list(corruptions.FAMILIES).index("snow")
    again = corruptions.corrupt(images[:2].double() / 255, "snow", 3, torch.Generator().manual_seed(10 * i + 3))
    assert torch.equal(sets[("snow", 3)], (again * 255).round().to(torch.uint8))  # the same for every network


# ----------------------------------------------------------------------------- mCE


def test_the_mce_of_a_model_evaluated_against_itself_is_100(images):
    model = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 10)).eval()
    with torch.no_grad():
        labels = model((images.float() / 255 - 0.286) / 0.353).argmax(1)  # clean error 0, corrupted errors above
    errors = robustness.top1_errors(model, robustness.image_sets(images, 0), labels, [0.286], [0.353])
    grid = {c: {s: errors[robustness.error_column(c, s)] for s in corruptions.SEVERITIES} for c in corruptions.FAMILIES}
    assert robustness.mce(grid, grid) == pytest.approx(100.0)
    measured = pd.DataFrame([{"run": "resnet/seed0", "step": "resnet", "seed": 0, **errors}])
    scored = robustness.scores(measured, "resnet").iloc[0]
    assert scored["mce"] == pytest.approx(100.0) and scored["relative_mce"] == pytest.approx(100.0)
    assert all(scored[f"ce.{c}"] == pytest.approx(100.0) for c in corruptions.FAMILIES)


def test_ce_is_the_ratio_of_summed_errors_and_relative_ce_of_their_rise_over_clean():
    mine, ref = {1: 20.0, 2: 30.0}, {1: 40.0, 2: 60.0}
    assert robustness.ce(mine, ref) == pytest.approx(50.0)
    assert robustness.relative_ce(mine, 10.0, ref, 10.0) == pytest.approx(100.0 * 30 / 80)


# ----------------------------------------------------------------------------- a smoke study's checkpoints


def make_run(root: Path, cfg, seed: int, weights, top1: float) -> Path:
    """A completed run as training leaves it: config.yaml, summary.json and checkpoint.pt
    (its network's weights, moved a little per seed)."""
    step = cfg.step.name
    run = root / step / f"seed{seed}"
    run.mkdir(parents=True)
    cfg = OmegaConf.merge(cfg, {"seed": seed})
    g = torch.Generator().manual_seed(seed)
    state = {k: v + 0.05 * seed * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
             for k, v in weights.items()}
    (run / rundir.CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    torch.save({"model": state, "epoch": 1, "history": []}, run / rundir.CHECKPOINT)
    summary = RunSummary(status=Status.completed, step=step, change=cfg.step.change, regime="micro", data=cfg.data.name,
                         recipe=cfg.recipe.name, seed=seed, epochs=1, epochs_done=1, top1=top1, params=1, gmacs=0.001)
    (run / rundir.SUMMARY).write_text(json.dumps(summary.to_dict()))
    return run


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    """Every step of the path on the smoke experiment's configs, each run with its (untrained)
    network's checkpoint: what a smoke sweep leaves, without its minutes."""
    root = tmp_path_factory.mktemp("measure") / "fashion_mnist_smoke_micro"
    for i, step in enumerate(roadmap.STEPS):
        cfg = roadmap.compose(step, "+experiment=smoke")
        weights = roadmap.build_model(cfg).state_dict()
        for seed in seeds_of(step):
            make_run(root, cfg, seed, weights, 70.0 + i / 10 + seed)
    return root


@pytest.fixture(scope="module")
def measured(smoke_study, tmp_path_factory):
    """The smoke study's figures folder, once analysis.erf has measured it."""
    out = tmp_path_factory.mktemp("figures")
    with pytest.raises(SystemExit) as exit_:
        erf.main([str(smoke_study), "--out", str(out), "--images", "2", "--scale", "2"])
    assert exit_.value.code == 0
    return out


@pytest.fixture(scope="module")
def measured_both(measured, smoke_study):
    """... and analysis.robustness."""
    with pytest.raises(SystemExit) as exit_:
        robustness.main([str(smoke_study), "--out", str(measured), "--images", "4"])
    assert exit_.value.code == 0
    return measured


def assert_every_step(table, column):
    assert list(table["step"]) == list(roadmap.STEPS)
    assert list(table[f"{column}_seeds"]) == [len(seeds_of(s)) for s in roadmap.STEPS]
    assert table[f"{column}_mean"].notna().all()
    two = table["step"].isin(TWO_SEEDS)
    assert table.loc[two, f"{column}_lo"].notna().all() and table.loc[~two, f"{column}_lo"].isna().all()
    assert table.loc[1:, f"{column}_delta"].notna().all() and pd.isna(table[f"{column}_delta"].iloc[0])


def test_the_erf_table_of_a_smoke_study_has_every_step(measured):
    assert_every_step(pd.read_csv(measured / "erf.csv"), "erf50_side")
    assert all(f"| {s} |" in (measured / "erf.md").read_text() for s in roadmap.STEPS)
    assert (measured / "erf.png").is_file() and (measured / "erf_runs.csv").is_file()


def test_the_robustness_table_of_a_smoke_study_has_every_step(measured_both):
    table = pd.read_csv(measured_both / "robustness.csv")
    assert_every_step(table, "mce")
    assert table.set_index("step").loc["resnet", "mce_mean"] == pytest.approx(100.0)  # the reference, over its seeds
    assert (measured_both / "robustness.png").is_file() and (measured_both / "robustness_runs.csv").is_file()
    assert "Skipped, not replaced: frost" in (measured_both / "robustness.md").read_text()


def test_erf_and_mce_become_columns_of_the_study_table_with_paired_changes(smoke_study, measured_both):
    R.save_tables(smoke_study, measured_both, with_runs=False)
    table = pd.read_csv(measured_both / "table.csv").set_index("step")
    runs = pd.read_csv(measured_both / "erf_runs.csv")
    side = runs.pivot(index="seed", columns="step", values="erf50_side")
    assert table.loc["gelu", "erf50_mean"] == pytest.approx(side["gelu"].mean())
    assert table.loc["gelu", "erf50_delta"] == pytest.approx((side["gelu"] - side["kernel_7"]).mean())  # seeds 0, 1
    assert table.loc["kernel_9", "erf50_delta"] == pytest.approx(side.loc[0, "kernel_9"] - side.loc[0, "kernel_7"])
    assert table["mce_mean"].notna().all() and table.loc["resnet", "mce_mean"] == pytest.approx(100.0)
    text = (measured_both / "table.md").read_text()
    assert "| ERF 50% (px) | Δ ERF 50% (px) | mCE | Δ mCE |" in text and "mCE: mean corruption error" in text
    assert all(line.count("|") == text.splitlines()[0].count("|") for line in text.splitlines()[:19])


def test_a_second_robustness_run_reuses_the_rows_of_unchanged_checkpoints(smoke_study, measured_both, capsys):
    code, out, _ = run_cli(robustness.main, [str(smoke_study), "--out", str(measured_both), "--images", "4"], capsys)
    runs = sum(len(seeds_of(s)) for s in roadmap.STEPS)
    assert code == 0 and f"evaluated 0 of {runs} runs" in out


def test_the_network_of_a_checkpoint_gives_its_runs_own_test_top1(tmp_path):
    from roadmap.train import train

    cfg = roadmap.compose("resnet", "+experiment=smoke", "recipe.epochs=1", "data.train_limit=128",
                          "data.test_limit=64", "train.progress=false")
    summary = train(cfg, tmp_path / "run")
    model, data = checkpoints.load_network(tmp_path / "run")
    test = checkpoints.test_images(data, 64)
    errors = robustness.top1_errors(model, {"clean_error": test.images}, test.labels, data.mean, data.std)
    assert errors["clean_error"] == pytest.approx(100.0 - summary.top1, abs=1e-6)


# ----------------------------------------------------------------------------- bad input


def test_a_study_without_checkpoints_is_named_in_one_line_with_how_to_get_them(tmp_path, capsys):
    code, _, err = run_cli(erf.main, [str(ROOT / "experiments" / "fashion_mnist_micro"), "--out", str(tmp_path)],
                           capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert "no checkpoint.pt in any of its 51 completed runs (resnet/seed0," in lines[0]
    assert "train the runs again" in lines[0] and list(tmp_path.iterdir()) == []


def test_runs_without_a_checkpoint_are_named_and_the_others_measured(smoke_study, tmp_path, capsys):
    study = tmp_path / "partial"
    for step in ("resnet", "modern_recipe"):
        shutil.copytree(smoke_study / step / "seed0", study / step / "seed0")
    (study / "modern_recipe" / "seed0" / rundir.CHECKPOINT).unlink()
    code, out, _ = run_cli(erf.main, [str(study), "--out", str(tmp_path / "out"), "--images", "1"], capsys)
    assert code == 0
    assert "1 of 2 completed runs keep no checkpoint.pt and are not measured (modern_recipe/seed0)" in out
    assert list(pd.read_csv(tmp_path / "out" / "erf.csv")["step"]) == ["resnet"]


def test_a_checkpoint_from_another_config_is_refused_by_name(smoke_study, tmp_path, capsys):
    study = tmp_path / "swapped"
    shutil.copytree(smoke_study / "kernel_7" / "seed0", study / "kernel_7" / "seed0")
    shutil.copy(smoke_study / "resnet" / "seed0" / rundir.CHECKPOINT, study / "kernel_7" / "seed0")
    with pytest.raises(ResultsError, match=r"checkpoint .*kernel_7/seed0/checkpoint.pt does not fit the network of "
                                           r".*kernel_7/seed0/config.yaml \(step kernel_7\): stem.conv.weight is "):
        checkpoints.load_network(study / "kernel_7" / "seed0")
    code, _, err = run_cli(robustness.main, [str(study), "--out", str(tmp_path / "out"), "--images", "2"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "does not fit the network" in err


def test_bad_options_are_one_line_errors(smoke_study, tmp_path, capsys):
    code, _, err = run_cli(erf.main, [str(smoke_study), "--images", "0", "--out", str(tmp_path)], capsys)
    assert code == 2 and err.startswith("error: --images=0 is not valid") and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(robustness.main, [str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "is not a directory" in err
    (tmp_path / "a_file").write_text("")
    code, _, err = run_cli(erf.main, [str(smoke_study), "--images", "1", "--out", str(tmp_path / "a_file")], capsys)
    assert code == 2 and err.startswith("error: cannot write") and len(err.strip().splitlines()) == 1
