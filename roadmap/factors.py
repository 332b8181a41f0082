"""The roadmap's decisions as factors: each decision of the main path, with its ResNet
level and its ConvNeXt level, expressed through the existing config fields. The steps in
conf/step/ stay the source of truth: applying the factors in roadmap order reproduces
every step of the main path (tests/test_designs.py checks it).

Two pairs of decisions act on one field, and the table says what each builds alone:

- `inverted_bottleneck` and `move_up_depthwise` set model.block: bottleneck, inverted,
  inverted_moved_up. Moving up is only defined on the inverted bottleneck (it moves the
  depthwise conv of the wide hidden layer to the narrow start), so move_up_depthwise
  requires inverted_bottleneck.
- `kernel_7` enlarges the moved-up depthwise conv (Section 2.5); on a conv that is not
  moved up the paper never tried it, so kernel_7 requires move_up_depthwise.
- `stage_ratio` and `wider` set model.widths with model.depths: the regime's
  resnet_widths, then stage_ratio_widths (r200 widens at the stage ratio), then
  wider_widths once `wider` is on, whatever the stage ratio.

Reverting a factor reverts the factors that require it (ConvNeXt without the inverted
bottleneck has neither the moved-up conv nor its 7x7 kernel); applying one alone on a
network that lacks what it requires has no meaning and is skipped with that reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from roadmap.errors import ConfigError

Config = Mapping[str, Any]  # a resolved run config, nested (config.yaml)


@dataclass(frozen=True)
class Factor:
    """One decision of the roadmap: its step, its two levels, and how a config shows it."""

    name: str
    """The step of the main path that makes the decision."""
    short: str
    """A short name, for random networks' names."""
    resnet: Tuple[str, ...]
    """Overrides at the ResNet level (the resnet step's values)."""
    convnext: Tuple[str, ...]
    """Overrides at the ConvNeXt level (the step's values)."""
    on: Callable[[Config], bool]
    """Whether a resolved config has the ConvNeXt level."""
    requires: Optional[str] = None
    """The factor this one is only defined on top of."""
    reason: Optional[str] = None
    """Why it has no meaning without `requires` (what `problem` says of such a combination)."""


def _model(cfg: Config, key: str) -> Any:
    return cfg["model"][key]


FACTORS: Tuple[Factor, ...] = (
    Factor(
        "modern_recipe",
        "recipe",
        ("recipe=classic", "model.drop_path_rate=0.0", "model.layer_scale=0.0", "model.init=kaiming"),
        (
            "recipe=convnext",
            "model.drop_path_rate=${regime.drop_path_rate}",
            "model.layer_scale=1e-6",
            "model.init=trunc_normal",
        ),
        lambda c: c["recipe"]["name"] == "convnext",
    ),
    Factor(
        "stage_ratio",
        "ratio",
        ("model.depths=${regime.resnet_depths}",),
        ("model.depths=${regime.depths}",),
        lambda c: list(_model(c, "depths")) == list(c["regime"]["depths"]),
    ),
    Factor(
        "patchify_stem",
        "patchify",
        ("model.stem=resnet",),
        ("model.stem=patchify",),
        lambda c: _model(c, "stem") == "patchify",
    ),
    Factor(
        "depthwise_conv",
        "dw",
        ("model.depthwise=false",),
        ("model.depthwise=true",),
        lambda c: bool(_model(c, "depthwise")),
    ),
    Factor("wider", "wide", (), (), lambda c: list(_model(c, "widths")) == list(c["regime"]["wider_widths"])),
    Factor("inverted_bottleneck", "inv", (), (), lambda c: _model(c, "block") in ("inverted", "inverted_moved_up")),
    Factor(
        "move_up_depthwise",
        "up",
        (),
        (),
        lambda c: _model(c, "block") == "inverted_moved_up",
        requires="inverted_bottleneck",
        reason="moving up is defined on the inverted bottleneck's depthwise conv",
    ),
    Factor(
        "kernel_7",
        "k7",
        ("model.kernel_size=3",),
        ("model.kernel_size=7",),
        lambda c: _model(c, "kernel_size") == 7,
        requires="move_up_depthwise",
        reason="the paper enlarges the moved-up depthwise conv only",
    ),
    Factor(
        "gelu",
        "gelu",
        ("model.activation=relu",),
        ("model.activation=gelu",),
        lambda c: _model(c, "activation") == "gelu",
    ),
    Factor(
        "fewer_activations",
        "1act",
        ("model.fewer_activations=false",),
        ("model.fewer_activations=true",),
        lambda c: bool(_model(c, "fewer_activations")),
    ),
    Factor(
        "fewer_norms",
        "1norm",
        ("model.fewer_norms=false",),
        ("model.fewer_norms=true",),
        lambda c: bool(_model(c, "fewer_norms")),
    ),
    Factor("layer_norm", "ln", ("model.norm=batch",), ("model.norm=layer",), lambda c: _model(c, "norm") == "layer"),
    Factor(
        "separate_downsampling",
        "sepdown",
        ("model.separate_downsampling=false",),
        ("model.separate_downsampling=true",),
        lambda c: bool(_model(c, "separate_downsampling")),
    ),
)
NAMES: Tuple[str, ...] = tuple(f.name for f in FACTORS)
BY_NAME: Dict[str, Factor] = {f.name: f for f in FACTORS}


def varied_by(network: str) -> Optional[str]:
    """The factor a leave-one-out or add-one network varies (its name's `-<factor>` suffix)."""
    return next((name for name in NAMES if network.endswith(f"-{name}")), None)


def shared_fields(levels: Mapping[str, bool]) -> List[str]:
    """The overrides of the two fields that two factors set together (module docstring)."""
    widths = ("wider_widths" if levels["wider"] else "stage_ratio_widths" if levels["stage_ratio"] else "resnet_widths")
    block = ("inverted_moved_up" if levels["move_up_depthwise"] else "inverted" if levels["inverted_bottleneck"]
             else "bottleneck")
    return [f"model.widths=${{regime.{widths}}}", f"model.block={block}"]


def overrides(levels: Mapping[str, bool]) -> List[str]:
    """The overrides that build the network with these levels, on top of +step=resnet."""
    out = [o for f in FACTORS for o in (f.convnext if levels[f.name] else f.resnet)]
    return out + shared_fields(levels)


def problem(levels: Mapping[str, bool]) -> Optional[str]:
    """Why a combination of levels has no meaning, or None when it builds a network the paper's terms define."""
    for f in FACTORS:
        if f.requires and levels[f.name] and not levels[f.requires]:
            return f"{f.name} without {f.requires}: {f.reason}"
    return None


def revert(levels: Mapping[str, bool], name: str) -> Dict[str, bool]:
    """`levels` with `name` at its ResNet level, and every factor that requires it too."""
    out = dict(levels)
    out[name] = False
    for f in FACTORS:  # in roadmap order: a chain (kernel_7 -> move_up -> inverted) reverts whole
        if f.requires and not out[f.requires]:
            out[f.name] = False
    return out


def levels_at(step_index: int) -> Dict[str, bool]:
    """The levels of the main path after its first `step_index` factors (0: the ResNet)."""
    return {f.name: i < step_index for i, f in enumerate(FACTORS)}


def levels_of(cfg: Config) -> Dict[str, bool]:
    """The level of every factor in a resolved run config."""
    return {f.name: bool(f.on(cfg)) for f in FACTORS}


def check_names(names: Sequence[str]) -> None:
    """ConfigError naming the first of `names` that is not a factor."""
    bad = [n for n in names if n not in BY_NAME]
    if bad:
        raise ConfigError(f"design.factors has '{bad[0]}', not a factor: choose from {', '.join(NAMES)}")
