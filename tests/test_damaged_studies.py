"""Analysis reads whatever a sweep leaves behind: one step, one seed, damaged records, runs
of another regime, a study being written, a read-only study, a design too small to fit.
Every case goes through the command a user runs (python -m analysis.plots) and must draw
what it can, name what it left out, exit 0, and never print a traceback; a study with
nothing to draw exits 2 with one line. The studies are copies of the committed ones with
their files damaged: nothing trains."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import roadmap.results as R
from roadmap.config import STEPS

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "experiments" / "fashion_mnist_micro"
RANDOM = ROOT / "experiments" / "fashion_mnist_micro_random"


def copy(tmp, name, source=REFERENCE, runs=None):
    """A copy of a committed study's runs (all, or the first `runs` of them)."""
    study = tmp / name
    for run in sorted(source.glob("*/seed*"))[:runs]:
        shutil.copytree(run, study / run.parent.name / run.name)
    return study


def edit(summary, **fields):
    summary.write_text(json.dumps({**json.loads(summary.read_text()), **fields}))


def plots(study, *args, cwd=ROOT, prefix=()):
    return subprocess.run([*prefix, sys.executable, "-m", "analysis.plots", str(study), *args], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)})


def one_step(study):
    for step in STEPS[1:]:
        shutil.rmtree(study / step)


def null_metric_line(study):
    path = study / "gelu" / "seed0" / "metrics.jsonl"
    path.write_text("null\n7\n[1, 2]\n" + '{"epoch": "x", "test_top1": "abc"}\n' + path.read_text())


def half_written_last_line(study):
    path = study / "gelu" / "seed0" / "metrics.jsonl"
    path.write_text(path.read_text()[:-40])


def being_written(study):
    (study / "gelu" / "seed1" / "summary.json").unlink()  # a run that has only just started
    edit(study / "kernel_7" / "seed2" / "summary.json", status="running", top1=None)


# case -> (damage, a run it leaves out of every average, the words saying why)
CASES = {
    "one_step": (one_step, None, "skipped the deltas figure"),
    "null_metric_line": (null_metric_line, None, None),
    "half_written_last_line": (half_written_last_line, None, None),
    "seed_not_a_number": (lambda s: edit(s / "gelu" / "seed1" / "summary.json", seed="abc"), "gelu/seed1",
                          "its seed 'abc' is not an integer"),
    "top1_a_string": (lambda s: edit(s / "gelu" / "seed1" / "summary.json", top1="abc"), "gelu/seed1", "unreadable"),
    "top1_nan": (lambda s: edit(s / "gelu" / "seed1" / "summary.json", top1=float("nan")), "gelu/seed1",
                 "is not a finite number"),
    "r50_run_in_a_micro_study": (lambda s: edit(s / "gelu" / "seed2" / "summary.json", regime="r50"), "gelu/seed2",
                                 "a regime of r50 in a study of micro"),
    "summary_null": (lambda s: (s / "gelu" / "seed0" / "summary.json").write_text("null"), "gelu/seed0",
                     "unreadable"),
    "being_written": (being_written, "kernel_7/seed2", "running"),
}


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """Every case's study, drawn by one `python -m analysis.plots` over all of them (as a user
    would name several): (folder, the command's result)."""
    tmp = tmp_path_factory.mktemp("damaged")
    for case, (damage, _, _) in CASES.items():
        damage(copy(tmp, case))
    out = subprocess.run([sys.executable, "-m", "analysis.plots", *(str(tmp / c) for c in CASES)], capture_output=True,
                         text=True, cwd=ROOT)
    return tmp, out


def test_plots_of_damaged_studies_exit_0_without_a_traceback(damaged):
    _, out = damaged
    assert out.returncode == 0 and "Traceback" not in out.stderr + out.stdout, out.stderr


@pytest.mark.parametrize("case", CASES)
def test_plots_draw_what_a_damaged_study_allows_and_name_what_they_left_out(damaged, case):
    tmp, out = damaged
    _, left_out, why = CASES[case]
    study = tmp / case
    figures = {p.name for p in (study / "figures").iterdir()}
    assert {"figure2.png", "path.png", "curves.png", "table.md"} <= figures
    table = (study / "figures" / "table.md").read_text()
    said = [line for line in out.stdout.splitlines() if line.startswith(f"{study}:")]
    if why:
        assert any(why in line for line in said), said
    if left_out:
        step, seed = left_out.split("/")
        assert f"{step} {seed}" in table.split("Not averaged:")[1]  # named in the footer, never averaged
        averaged = R.averaged(R.load(study))
        assert str(study / step / seed) not in set(averaged["run_dir"])


def test_a_half_written_metrics_line_reads_as_the_run_stopped_there(tmp_path):
    study = copy(tmp_path, "half")
    half_written_last_line(study)
    curves = R.history(study)
    epochs = curves[(curves["step"] == "gelu") & (curves["seed"] == 0) & (curves["metric"] == "top1")]["epoch"]
    assert list(epochs) == [1, 2]  # epoch 3's line was cut short


def test_a_read_only_study_is_read_and_its_figures_go_elsewhere(tmp_path):
    study = copy(tmp_path, "colleague")
    elsewhere = tmp_path / "mine"
    if os.geteuid() == 0 and shutil.which("unshare"):  # root ignores permission bits: a read-only mount, as a user has
        s = str(study)
        mount = f'mount --bind "{s}" "{s}" && mount -o remount,bind,ro "{s}"'
        prefix = ("unshare", "-m", "sh", "-c", mount + ' && exec "$0" "$@"')
    else:
        subprocess.run(["chmod", "-R", "a-w", str(study)], check=True)
        prefix = ()
    before = sorted(p.relative_to(study) for p in study.rglob("*"))
    out = plots(study, "--out", elsewhere, prefix=prefix)
    assert out.returncode == 0, out.stderr
    assert {"figure2.png", "table.md"} <= {p.name for p in elsewhere.iterdir()}
    default = plots(study, cwd=tmp_path, prefix=prefix)  # no --out: a default outside the study, said in one line
    assert default.returncode == 0, default.stderr
    assert (tmp_path / "runs" / "figures" / "colleague" / "figure2.png").exists()
    assert "cannot write" in default.stdout and "runs/figures/colleague" in default.stdout
    assert sorted(p.relative_to(study) for p in study.rglob("*")) == before  # nothing written into the study


def test_unchanged_tables_are_not_rewritten(tmp_path):
    study = copy(tmp_path, "again")
    R.save_tables(study)
    stamps = {p: p.stat().st_mtime_ns for p in study.glob("*.csv")}
    R.save_tables(study)
    assert {p: p.stat().st_mtime_ns for p in study.glob("*.csv")} == stamps


def test_a_random_design_too_small_to_fit_names_the_figures_it_cannot_draw(tmp_path):
    study = copy(tmp_path, "random3", RANDOM, runs=3)
    out = plots(study)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "the main effects of" in out.stdout and "cannot be estimated" in out.stdout
    assert not (study / "figures" / "effects.png").exists()
    effects = R.main_effects(R.load(study))
    assert effects["effect"].isna().all()  # 3 networks cannot estimate 9 factors: no number, not +25 points


def test_a_study_with_nothing_to_draw_exits_2_with_one_line(tmp_path):
    (tmp_path / "empty" / "resnet").mkdir(parents=True)
    out = plots(tmp_path / "empty")
    assert out.returncode == 2 and out.stderr.strip().startswith("error: no runs under")
    assert len(out.stderr.strip().splitlines()) == 1


def test_the_four_design_answers_are_refused_in_the_wrong_order():
    studies = [ROOT / "experiments" / f"fashion_mnist_micro{s}" for s in ("", "_add_one", "_leave_one_out", "_random")]
    out = subprocess.run([sys.executable, "-m", "analysis.design_figures", *map(str, studies), "/nonexistent/never"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "argument 2" in out.stderr and "leave_one_out" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_runs_of_another_regime_are_named_and_never_averaged(tmp_path):
    study = copy(tmp_path, "mixed")
    edit(study / "gelu" / "seed2" / "summary.json", regime="r50")
    runs = R.load(study)
    row = runs[runs["run_dir"] == str(study / "gelu" / "seed2")].iloc[0]
    assert row["left_out"] == "a regime of r50 in a study of micro"
    assert R.step_table(runs).set_index("step").loc["gelu", "seeds"] == 2
    assert pd.isna(runs[runs["step"] == "resnet"]["left_out"]).all()


def test_every_committed_run_reads_its_status_as_a_status_old_layouts_included():
    from roadmap.rundir import Status, read_summary

    runs = sorted((ROOT / "experiments").glob("**/seed*/summary.json"))
    assert len(runs) > 100
    statuses = {read_summary(p.parent).status for p in runs}
    assert statuses <= set(Status) and all(isinstance(s, Status) for s in statuses)


@pytest.mark.parametrize("status", ["unreadable", "incomplete", "done", None, 3])
def test_a_summary_whose_status_no_run_writes_reads_as_unreadable(tmp_path, status):
    from roadmap.rundir import Status, summary_and_status

    run = copy(tmp_path, "study", runs=1) / "depthwise_conv" / "seed0"
    edit(run / "summary.json", status=status)
    assert summary_and_status(run) == (None, Status.unreadable)


def test_a_summary_reads_back_and_writes_the_same_file(tmp_path):
    from roadmap.rundir import Status, read_summary, write_summary

    run = tmp_path / "run"
    summary = read_summary(sorted(REFERENCE.glob("*/seed0"))[0])
    write_summary(run, summary)
    again = read_summary(run)
    assert again == summary and again.status is Status.completed
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
