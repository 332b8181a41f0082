"""roadmap: every network on the ConvNeXt paper's path from ResNet to ConvNeXt."""

from roadmap.config import STEPS, compose, expand_steps
from roadmap.errors import ConfigError, DataError, ResultsError, RoadmapError, RunDirError, WeightImportError
from roadmap.complexity import Complexity
from roadmap.config import model_config
from roadmap.model import ConvNet, ModelConfig
from roadmap.steps import complexity


def build_model(cfg) -> ConvNet:
    """The network of a composed config (roadmap.compose), a RunConfig or a ModelConfig."""
    return ConvNet(model_config(cfg))


from roadmap.weights import import_weights  # noqa: E402
from roadmap.timm_models import register as register_timm, register_when_imported, timm_name  # noqa: E402

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
