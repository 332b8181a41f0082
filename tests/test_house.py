"""The house rules, checked: imports run one way down the data flow, functions stay short,
every config field and record field says what it is where it is declared, one name per
idea, one line length held."""

import ast
import collections
import dataclasses
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The stages of the data flow, bottom up: a module imports only from stages below its own.
# roadmap/__init__.py's docstring prints this map (checked below).
LAYERS = [
    {"errors", "paper", "stats", "tables"},
    {"model", "randaugment", "machine", "rundir", "weights", "factors"},
    {"recipe", "references"},
    {"augment"},
    {"data"},
    {"config"},
    {"complexity", "engine", "loggers", "cli", "results", "designs", "timm_models"},
    {"schedule"},
    {"wall_time", "inspect", "export"},
    {"bench_report"},
    {"bench"},
    {"train"},
    {"progress"},
    {"sweep"},
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def python_files():
    return sorted((ROOT / "roadmap").glob("*.py")) + sorted((ROOT / "analysis").glob("*.py"))


def roadmap_imports(path: Path):
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("roadmap"):
            found |= {a.name for a in node.names} if node.module == "roadmap" else {node.module.split(".")[1]}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("roadmap.")}
    return found


def test_every_module_has_its_place_in_the_data_flow():
    modules = {p.stem for p in (ROOT / "roadmap").glob("*.py")} - {"__init__"}
    assert modules == set(LAYER_OF)


MODULES = sorted(p for p in (ROOT / "roadmap").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_imports_run_one_way_down_the_data_flow(path):
    above = {m for m in roadmap_imports(path) if LAYER_OF[m] >= LAYER_OF[path.stem]}
    assert not above, f"{path.stem} (layer {LAYER_OF[path.stem]}) imports {above} from its own layer or above"


def test_the_layer_map_is_printed_in_the_package_docstring():
    import roadmap

    floors = [re.fullmatch(r"\s*(\d+)  (.+)", line) for line in roadmap.__doc__.splitlines()]
    printed = {int(m[1]): set(m[2].split(", ")) for m in floors if m}
    assert printed == dict(enumerate(LAYERS))


TRAINER = ("train", "progress", "sweep")  # the modules that run training: one run, the sweep's display, the sweep


@pytest.mark.parametrize("name", ["bench", "schedule"])
def test_bench_sits_below_the_trainer_and_imports_none_of_it(name):
    """Bench measures the trainer's own step (roadmap.engine), not by running the trainer."""
    assert LAYER_OF[name] < min(LAYER_OF[t] for t in TRAINER if t in LAYER_OF)
    code = f"import sys, roadmap.{name}; print(' '.join(m for m in sys.modules if m.startswith('roadmap.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert {m.split(".")[1] for m in out.stdout.split()} & set(TRAINER) == set()


# The allow-list: public names that more than one module defines, each with why it stays so.
SHARED_NAMES = {
    # every `python -m` entry point's own (bench, export, inspect, sweep, train and the analyses);
    # train.main and sweep.main are also the [project.scripts] commands (pyproject.toml)
    "main": "the entry point of a module run as a command",
}
DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def test_no_public_name_is_defined_in_two_modules():
    where = collections.defaultdict(list)
    for p in python_files():
        for node in ast.parse(p.read_text()).body:
            if isinstance(node, DEFINITIONS) and not node.name.startswith("_"):
                where[node.name].append(f"{p.parent.name}/{p.name}")
    assert {name: files for name, files in where.items() if len(files) > 1 and name not in SHARED_NAMES} == {}


def test_the_figures_import_only_the_results_and_below():
    assert roadmap_imports(ROOT / "analysis" / "plots.py") <= {"results", "config", "paper"}


def test_no_function_is_much_over_50_lines():
    long = [f"{p.relative_to(ROOT)}:{n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p in python_files() for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 50]
    assert long == []


CONFIGS = ["roadmap.model:ModelConfig", "roadmap.recipe:RecipeConfig", "roadmap.data:DataConfig",
           "roadmap.config:RunConfig", "roadmap.config:StepConfig", "roadmap.config:RegimeConfig",
           "roadmap.config:TrainConfig", "roadmap.config:LoggerConfig", "roadmap.rundir:RunSummary",
           "roadmap.rundir:EpochRecord", "roadmap.export:ExportConfig", "roadmap.export:Exporter",
           "roadmap.bench:BenchConfig", "roadmap.bench:Entry", "roadmap.bench:Rates", "roadmap.bench_report:Target",
           "roadmap.bench_report:BenchedNetwork", "roadmap.bench_report:Measured", "roadmap.bench_report:Ratio",
           "roadmap.bench_report:BenchResult", "roadmap.wall_time:StepRates", "roadmap.wall_time:StudyProjection",
           "roadmap.complexity:Complexity", "roadmap.factors:Factor"]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_and_record_field_is_documented_where_it_is_declared(name):
    module, cls = name.split(":")
    source = Path(importlib.import_module(module).__file__).read_text()
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == cls)
    undocumented = [s.target.id for s, after in zip(node.body, node.body[1:] + [None]) if isinstance(s, ast.AnnAssign)
                    and not (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant))]
    assert undocumented == []


def test_one_name_per_quantity_from_the_run_record_to_the_results_table():
    import roadmap.results as R
    from roadmap.rundir import EpochRecord, RunSummary

    summary = {f.name for f in dataclasses.fields(RunSummary)}
    assert {"top1", "top5", "images_per_s"} <= summary & {f.name for f in dataclasses.fields(EpochRecord)}
    besides = {"study", "swept", "order", "run_dir", "collapsed", "left_out"}  # where a run sits; the judgements
    assert set(R.RUN_COLUMNS) - besides <= summary


def test_the_line_length_and_lint_rules_hold():
    """pyproject.toml sets them (ruff, line length 120); ruff is a test dependency."""
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "roadmap", "analysis", "tests"], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:]
