"""Typed configs, registered with Hydra's ConfigStore, and `compose`.

The run config is `RunConfig`: the step (which roadmap step, what it changed), the
regime (the sizes a step file refers to), the data's shapes, and the model. The YAML
in `conf/` fills it; a mistyped key, a value of the wrong type or a bad value fails
when the config is composed, as a `ConfigError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from roadmap.data import DataConfig
from roadmap.errors import HALF_OPEN, NON_NEGATIVE_INT, POSITIVE_INT, Choice, ConfigError, check_ranges
from roadmap.factors import check_names
from roadmap.machine import Device
from roadmap.model import ModelConfig
from roadmap.recipe import RecipeConfig

# The paper's path (Section 2, Tables 10 and 11), in order. kernel_5/9/11 are side
# branches of move_up_depthwise; the path goes on from kernel_7.
STEPS = (
    "resnet",
    "modern_recipe",
    "stage_ratio",
    "patchify_stem",
    "depthwise_conv",
    "wider",
    "inverted_bottleneck",
    "move_up_depthwise",
    "kernel_5",
    "kernel_7",
    "kernel_9",
    "kernel_11",
    "gelu",
    "fewer_activations",
    "fewer_norms",
    "layer_norm",
    "separate_downsampling",
)
SIDE_BRANCHES = ("kernel_5", "kernel_9", "kernel_11")
# The step each one builds on: the one before it, except the kernel-size side branches.
PARENTS = {step: prev for prev, step in zip(STEPS, STEPS[1:])}
PARENTS.update({k: "move_up_depthwise" for k in ("kernel_5", "kernel_7", "kernel_9", "kernel_11")}, gelu="kernel_7")
GROUPS = ("regime", "data", "recipe", "budget", "logger", "experiment", "design")


def _conf_dir() -> Path:
    spec = importlib.util.find_spec("roadmap.conf")  # conf/ ships as the package roadmap.conf
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(__file__).resolve().parent.parent / "conf"


CONF_DIR = _conf_dir()


@dataclass
class StepConfig:
    name: str = "base"
    """The step's name, as its file in conf/step/."""
    change: str = "ModelConfig defaults (ResNet-50), no step selected"
    """What this step changes, in the paper's words."""
    reference: Optional[str] = None
    """A design's network: the network it is compared with (a step builds on PARENTS[name])."""


class Design(Choice):
    path = "path"  # the paper's cumulative path: every step (as +step=all)
    leave_one_out = "leave_one_out"  # ConvNeXt with one factor reverted at a time, and ConvNeXt
    add_one = "add_one"  # the modern-recipe ResNet with one factor applied at a time, and that ResNet
    random = "random"  # networks with every factor drawn independently


@dataclass
class DesignConfig:
    """A design of networks beyond the path, built from the factor table (roadmap/factors.py)."""

    name: Design = Design.path
    """path, leave_one_out, add_one or random."""
    samples: int = 48
    """random: how many distinct networks."""
    seed: int = 0
    """random: the draw's seed (the networks are reproducible from it)."""
    factors: Optional[List[str]] = None
    """The factors the design varies (None: all); the others stay at ConvNeXt's level."""

    def __post_init__(self) -> None:
        check_ranges(self, "design", {"samples": POSITIVE_INT, "seed": NON_NEGATIVE_INT})
        if self.factors is not None:
            check_names(list(self.factors))


@dataclass
class RegimeConfig:
    """The sizes a step file refers to. r50: ResNet-50 -> ConvNeXt-T; r200: ResNet-200 ->
    ConvNeXt-B; micro: the same path, narrower and shallower, for small images."""

    name: str
    """r50, r200 or micro: the study's name ends with it."""
    resnet_depths: List[int]
    """Blocks per stage of the starting ResNet."""
    depths: List[int]
    """Blocks per stage from `stage_ratio` on (1:1:3:1)."""
    resnet_widths: List[int]
    """Widths of the starting ResNet (the paper's numbers: a bottleneck's inner width)."""
    stage_ratio_widths: List[int]
    """Widths from `stage_ratio` on (r200 also widens there, 64 -> 84)."""
    wider_widths: List[int]
    """Widths from `wider` on."""
    drop_path_rate: float
    """Stochastic depth of the modern recipe (0.1 for T, 0.5 for B)."""

    def __post_init__(self) -> None:
        check_ranges(
            self,
            "regime",
            {
                "resnet_depths": POSITIVE_INT,
                "depths": POSITIVE_INT,
                "resnet_widths": POSITIVE_INT,
                "stage_ratio_widths": POSITIVE_INT,
                "wider_widths": POSITIVE_INT,
                "drop_path_rate": HALF_OPEN,
            },
        )


@dataclass
class TrainConfig:
    """How a run uses the machine; none of it changes the recipe."""

    device: Device = Device.auto
    """auto (CUDA when there is a GPU, else the CPU), cpu or cuda."""
    bf16: bool = True
    """bf16 autocast on CUDA (ignored on the CPU)."""
    tf32: bool = True
    """On CUDA, float32 matrix products and convolutions in TF32 (Ampere and newer; torchvision's
    default for convolutions): what runs outside bf16 autocast, and all of train.bf16=false.
    false: full float32. Ignored on the CPU."""
    channels_last: bool = True
    """channels-last memory layout, on the CPU too (faster for the micro steps with BatchNorm: BENCHMARKS.md)."""
    compile: bool = False
    """torch.compile the model."""
    threads: int = 0
    """CPU threads for torch; 0 = torch's default."""
    progress: bool = True
    """A progress bar per epoch when attached to a terminal (plain lines otherwise)."""

    def __post_init__(self) -> None:
        check_ranges(self, "train", {"threads": NON_NEGATIVE_INT})


class LoggerKind(Choice):
    none = "none"  # the run directory only
    wandb = "wandb"  # Weights & Biases too


class WandbMode(Choice):
    auto = "auto"  # online with WANDB_API_KEY set, else offline
    online = "online"
    offline = "offline"


@dataclass
class LoggerConfig:
    """Where epochs are logged besides the run directory (which is always written)."""

    kind: LoggerKind = LoggerKind.none
    """none or wandb."""
    project: str = "roadmap"
    """The W&B project."""
    entity: Optional[str] = None
    """The W&B entity (user or team); None: the API key's default."""
    mode: WandbMode = WandbMode.auto
    """wandb mode: online, offline, or auto (offline when no API key is set)."""


@dataclass
class SweepConfig:
    """How a sweep shares its runs with other sweeps; nothing here changes what a run computes."""

    lock: str = "run"
    """Where each run's lock lives, held (flock) by the process that trains it, so that two
    sweeps never train one run. run: the run directory's .lock (the study's filesystem must
    lock). An absolute directory on a disk that locks: one lock file per run there (it guards
    against sweeps on this machine only). none: no lock; start one sweep at a time."""

    def __post_init__(self) -> None:
        if self.lock not in ("run", "none") and not Path(self.lock).expanduser().is_absolute():
            raise ConfigError(
                f"sweep.lock={self.lock} is not valid: use run, none, or an absolute directory for the locks"
            )


@dataclass
class RunConfig:
    """Everything a run is: its step, the regime's sizes, the data, the network, the
    recipe, how it uses the machine, where it logs, its seed and its study."""

    step: StepConfig = field(default_factory=StepConfig)
    """Which step of the roadmap (+step=<name>)."""
    regime: RegimeConfig = field(default_factory=lambda: RegimeConfig("?", [], [], [], [], [], 0.0))
    """The sizes the step files refer to (regime=r50, r200, micro)."""
    data: DataConfig = field(default_factory=lambda: DataConfig("?", "fashion_mnist", 32, 1, 10))
    """The images (data=fashion_mnist, cifar10, imagenet, ...)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The network: every design decision of the roadmap (roadmap/model.py)."""
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    """How it is trained (recipe=classic, convnext; roadmap/recipe.py)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """How the run uses the machine."""
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    """Where epochs are logged besides the run directory."""
    design: Optional[DesignConfig] = None
    """The sweep's design (+design=<name>), recorded with each of its runs."""
    sweep: SweepConfig = field(default_factory=SweepConfig)
    """How a sweep shares its runs with other sweeps (sweep.lock)."""
    seed: int = 0
    """Seeds the network's init, the data order, every augmentation draw and stochastic depth."""
    study: str = "${data.name}_${regime.name}"
    """The study's name: its runs live in runs/<study>/<step>/seed<k>/ (swept keys add a level each)."""

    def __post_init__(self) -> None:
        m, d = self.model, self.data
        for key, data_key in (("in_chans", "channels"), ("num_classes", "num_classes")):
            if getattr(m, key) != getattr(d, data_key):
                raise ConfigError(
                    f"model.{key}={getattr(m, key)} conflicts with data.{data_key}={getattr(d, data_key)} "
                    f"of data={d.name}: drop the model.{key} override, or choose matching data"
                )
        check_ranges(self, "", {"seed": NON_NEGATIVE_INT})
        if d.image_size < m.total_stride:
            stem = f"model.stem={m.stem.value}" + (f" (patch {m.patch_size})" if m.stem.value == "patchify" else "")
            raise ConfigError(
                f"data.image_size={d.image_size} conflicts with {stem} and {len(m.depths)} stages: "
                "the last stage would "
                f"see less than one pixel; use data.image_size>={m.total_stride}, a smaller patch or fewer stages"
            )


ConfigStore.instance().store(name="run_schema", node=RunConfig)


def step_order(step: Optional[str]) -> int:
    """A step's place in the roadmap (STEPS); steps a user added come after the paper's."""
    return STEPS.index(step) if step in STEPS else len(STEPS)


def available_steps() -> List[str]:
    """The paper's steps in order, then any step files a user added to conf/step/."""
    found = sorted(p.stem for p in (CONF_DIR / "step").glob("*.yaml"))
    return list(STEPS) + [s for s in found if s not in STEPS]


def options(group: str) -> List[str]:
    """The options of a config group: its files in conf/<group>/."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def expand_steps(spec: Union[str, Sequence[object]]) -> List[str]:
    """'all', a comma-separated list of step names, or a list of names (each may be 'all',
    as +step=all,gelu reads) -> the list of steps, checked."""
    valid = available_steps()
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    out: List[str] = []
    for name in names:
        if name == "all":
            out.extend(valid)
        elif isinstance(name, str) and name in valid:
            out.append(name)
        else:
            raise ConfigError(f"unknown step '{name}': choose one of {', '.join(valid)}, or all")
    return out


def _check_group_choices(overrides: Sequence[str]) -> None:
    """An unknown option of a config group, named in one line (Hydra's own message spans several)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for ov in OverridesParser.create().parse_overrides(list(overrides)):
        value = ov.value()
        if ov.key_or_group in GROUPS and isinstance(value, str) and value not in options(ov.key_or_group):
            raise ConfigError(
                f"unknown {ov.key_or_group} '{value}': choose one of {', '.join(options(ov.key_or_group))}"
            )


def _one_line(exc: BaseException) -> str:
    """The clearest one-line message in an exception chain from Hydra/OmegaConf."""
    chain = []
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for e in chain:
        if isinstance(e, ConfigError):
            return str(e).splitlines()[0]
    for e in chain:
        if isinstance(e, OmegaConfBaseException):
            msg = str(getattr(e, "msg", None) or e).splitlines()[0]
            key = getattr(e, "full_key", None)
            if "not in" in msg and key:
                parent, _, leaf = key.rpartition(".")
                return f"unknown config key '{key}': {_valid_keys(parent)}"
            if key:
                return f"bad value for '{key}': {msg}"
            return msg
    return str(chain[-1]).splitlines()[0]


def _valid_keys(parent: str) -> str:
    node = OmegaConf.structured(RunConfig)
    for part in filter(None, parent.split(".")):
        node = node[part]
    return f"valid keys{' in ' + parent if parent else ''} are {', '.join(node.keys())}"


def compose(step: str, *overrides: str) -> DictConfig:
    """The composed, resolved and validated config of one roadmap step.

    `compose("patchify_stem", "regime=r50", "model.kernel_size=5")` is what
    `+step=patchify_stem regime=r50 model.kernel_size=5` gives on the command line.
    Raises ConfigError with a one-line message for any bad input.
    """
    if not isinstance(step, str):
        raise ConfigError(f"compose() takes a step name first, not {step!r}: one of {', '.join(available_steps())}")
    if step == "all" or "," in step:
        raise ConfigError(f"compose() takes one step, not '{step}': loop over roadmap.expand_steps('{step}')")
    expand_steps(step)  # an unknown name fails here, listing the valid ones
    return compose_overrides(f"+step={step}", *overrides)


def compose_overrides(*overrides: str) -> DictConfig:
    """The config that these overrides compose (a step among them or not), validated."""
    bad = next((o for o in overrides if not isinstance(o, str)), None)
    if bad is not None:
        raise ConfigError(f"overrides are strings such as 'regime=r50', not {bad!r}")
    return _compose(list(overrides))


def _compose(overrides: List[str], with_hydra: bool = False) -> DictConfig:
    try:
        _check_group_choices(overrides)
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose("config", overrides=overrides, return_hydra_config=with_hydra)
        if with_hydra:
            return cfg
        OmegaConf.resolve(cfg)
        validate(cfg)
    except ConfigError:
        raise
    except (HydraException, MissingConfigException, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(_one_line(e)) from e
    return cfg


def _usage(app: str) -> str:
    """The usage text of an entry point (its module docstring), for Hydra's --help."""
    import importlib

    try:
        return (importlib.import_module(f"roadmap.{app}").__doc__ or "").strip() + "\n"
    except ImportError:
        return f"{app}: a roadmap entry point\n"


# conf/hydra/help/roadmap.yaml puts the entry point's usage above Hydra's listing of groups.
OmegaConf.register_new_resolver("roadmap.usage", _usage, replace=True)


def hydra_config(step: Optional[str], overrides: Sequence[str]) -> DictConfig:
    """Hydra's own config (run and sweep directories, launcher, ...) for this step and these
    overrides, hydra.* included."""
    return _compose([*([f"+step={step}"] if step else []), *overrides], with_hydra=True).hydra


def run_dir_of(step: str, overrides: Sequence[str]) -> Path:
    """The run directory Hydra will use for this step and these overrides (hydra.* included)."""
    return Path(hydra_config(step, overrides).run.dir)


def validate(cfg: DictConfig) -> RunConfig:
    """Build the typed config, which runs every dataclass's checks; keys that no schema
    declares (added with `+recipe.x=`) are refused, as unknown keys already are."""
    undeclared = undeclared_keys(cfg)
    if undeclared:
        key, schema = undeclared[0]
        raise ConfigError(f"+{key}: {schema.__module__}.{schema.__name__} declares no key "
                          f"'{key.rsplit('.', 1)[-1]}', so nothing would read it: check its spelling "
                          "(python -m roadmap.train --cfg job lists the keys)")
    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except (OmegaConfBaseException, ValueError) as e:
        raise ConfigError(_one_line(e)) from e


def undeclared_keys(node: DictConfig, prefix: str = "") -> List[Tuple[str, type]]:
    """(dotted key, its node's dataclass) for every key of a structured node that its
    dataclass does not declare, depth first."""
    schema = OmegaConf.get_type(node)
    declared = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    found: List[Tuple[str, type]] = []
    for key in node.keys():
        if declared is not None and key not in declared:
            found.append((f"{prefix}{key}", schema))
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            found += undeclared_keys(child, f"{prefix}{key}.")
    return found


def model_config(cfg) -> ModelConfig:
    """The ModelConfig inside a composed config, a RunConfig, or a ModelConfig."""
    if isinstance(cfg, ModelConfig):
        return cfg
    if isinstance(cfg, RunConfig):
        return cfg.model
    if isinstance(cfg, DictConfig):
        node = cfg.model if "model" in cfg else cfg
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), node))  # type: ignore[return-value]
    raise ConfigError(
        f"expected a composed config (roadmap.compose), a RunConfig or a ModelConfig, not {type(cfg).__name__}"
    )
