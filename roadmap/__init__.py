"""roadmap: every network on the ConvNeXt paper's path from ResNet to ConvNeXt.

Its modules stand in floors along the data flow: each imports only from the floors below
its own (tests/test_house.py holds this map and checks it). Top down:

    13  sweep
    12  progress
    11  train
    10  bench
     9  bench_report
     8  wall_time, inspect, export
     7  schedule
     6  complexity, engine, loggers, cli, results, designs, timm_models
     5  config
     4  data
     3  augment
     2  recipe, references
     1  model, randaugment, machine, rundir, weights, factors
     0  errors, paper, stats, tables
"""

from roadmap.complexity import Complexity, complexity
from roadmap.config import STEPS, compose, expand_steps, model_config
from roadmap.errors import ConfigError, DataError, ResultsError, RoadmapError, RunDirError, WeightImportError
from roadmap.model import ConvNet, ModelConfig
from roadmap.timm_models import register as register_timm
from roadmap.timm_models import register_when_imported, timm_name
from roadmap.weights import import_weights


def build_model(cfg) -> ConvNet:
    """The network of a composed config (roadmap.compose), a RunConfig or a ModelConfig."""
    return ConvNet(model_config(cfg))


# timm.create_model("roadmap_r50_gelu") works once timm is imported, before or after roadmap;
# roadmap does not import timm itself (an optional extra: roadmap/timm_models.py says why).
register_when_imported()

__all__ = [
    "STEPS",
    "compose",
    "expand_steps",
    "build_model",
    "complexity",
    "import_weights",
    "register_timm",
    "timm_name",
    "ConvNet",
    "ModelConfig",
    "Complexity",
    "RoadmapError",
    "ConfigError",
    "DataError",
    "RunDirError",
    "ResultsError",
    "WeightImportError",
]
