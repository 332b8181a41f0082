"""The roadmap's networks as timm models: `timm.create_model("roadmap_r50_gelu")`.

Every step of every regime (conf/step/, steps you added included, x conf/regime/) is the
timm model `roadmap_{regime}_{step}`, at ImageNet's shapes (`data=imagenet`: 3 channels,
1000 classes, 224 px) unless timm's keyword arguments say otherwise. timm is an optional
extra (`pip install 'roadmap[timm]'`) and this module imports it only when it is used:
`import roadmap` leaves a post-import hook that registers the models when timm is
imported (in either order), and `roadmap.register_timm()` registers them at once.
Importing timm costs about 0.9 s on top of roadmap's 4.7 s (2-core CPU), which every
command of this project would pay.

The model, `TimmConvNet`, is the step's `ConvNet` (the same modules, state dict and
logits) with timm's interface: `forward_features` (the last stage's feature map),
`forward_head(x, pre_logits)`, `get_classifier`, `reset_classifier`, `feature_info` and
`forward_intermediates` (which `features_only=True` uses, through timm's
FeatureGetterNet), and a `pretrained_cfg` from the step's recipe: its evaluation
interpolation, ImageNet's mean and std, the 0.875 centre crop of roadmap.data.

Published weights exist for the ends only (PUBLISHED). timm fetches them through
torch.hub's cache, or reads `pretrained_cfg_overlay=dict(file=...)`, and hands the file to
`TimmConvNet.load_pretrained`, which imports it with roadmap.weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.abc
import importlib.util
import sys
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
import yaml
from torch import nn

from roadmap import config
from roadmap.config import available_steps, compose, model_config, options
from roadmap.errors import HALF_OPEN, ConfigError
from roadmap.model import ConvNet, Init, ModelConfig
from roadmap.weights import import_weights

IMAGENET = "data=imagenet"  # the shapes timm's models take: 3 channels, 1000 classes, 224 px
CROP_PCT = 0.875  # roadmap.data's evaluation transform: resize to side / 0.875, centre crop
PAPER = dict(paper_name="A ConvNet for the 2020s", paper_ids="arXiv:2201.03545")
# The published weights: the two ends of the path (no ResNet-200 in a layout roadmap.weights reads is published).
PUBLISHED: Dict[Tuple[str, str], Dict[str, str]] = {
    ("r50", "resnet"): dict(
        tag="tv_in1k", url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
        origin_url="https://github.com/pytorch/vision", license="bsd-3-clause",
    ),
    ("r50", "separate_downsampling"): dict(
        tag="fb_in1k", url="https://dl.fbaipublicfiles.com/convnext/convnext_tiny_1k_224_ema.pth",
        origin_url="https://github.com/facebookresearch/ConvNeXt", license="mit",
    ),
    ("r200", "separate_downsampling"): dict(
        tag="fb_in1k", url="https://dl.fbaipublicfiles.com/convnext/convnext_base_1k_224_ema.pth",
        origin_url="https://github.com/facebookresearch/ConvNeXt", license="mit",
    ),
}
# global_pool: the pooling before the head. Each keeps the channels, so the head's norm and classifier fit.
POOLS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "avg": lambda x: x.mean((2, 3)),  # the roadmap's
    "max": lambda x: x.amax((2, 3)),
    "avgmax": lambda x: 0.5 * (x.mean((2, 3)) + x.amax((2, 3))),
}
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, where built: 10x faster
EXTRA = "roadmap's timm models need timm, an optional extra: pip install 'roadmap[timm]'"

default_cfgs: Dict[str, Any] = {}  # timm's register_model reads the registering module's default_cfgs
__all__ = ["TimmConvNet", "register", "timm_name", "register_when_imported", "PUBLISHED"]


def _timm():
    """timm.models, or a one-line error naming the extra that installs it."""
    try:
        import timm.models
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "timm":
            raise
        raise ModuleNotFoundError(EXTRA, name="timm") from None
    return timm.models


# ----------------------------------------------------------------------------- the model


def _check_head(num_classes: Any, global_pool: Any, drop_rate: Any) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ConfigError(f"num_classes={num_classes!r} is not valid: give the classifier's outputs, 0 for none")
    if global_pool not in POOLS:
        raise ConfigError(f"global_pool={global_pool!r} is not supported: choose one of {', '.join(POOLS)} "
                          "(forward_features gives the map before pooling)")
    if not HALF_OPEN.holds(drop_rate):
        raise ConfigError(f"drop_rate={drop_rate!r} is not valid: {HALF_OPEN.text}")


class TimmConvNet(ConvNet):
    """A roadmap network with timm's model interface: ConvNet's modules, state dict and logits.

    Args:
        cfg: the step's network (its ModelConfig).
        num_classes: the classifier's outputs; 0 for none (forward then gives the pooled features).
        in_chans: input channels.
        drop_path_rate: stochastic depth of the last block; None keeps the step's own.
        drop_rate: dropout before the classifier (timm's); 0, the roadmap's, for none.
        global_pool: the pooling before the head: avg (the roadmap's), max or avgmax.
        device: where to build it (timm's factory argument); None: torch's default.
        dtype: its parameters' dtype; None: torch's default.
    """

    def __init__(self, cfg: ModelConfig, num_classes: int = 1000, in_chans: int = 3,
                 drop_path_rate: Optional[float] = None, drop_rate: float = 0.0, global_pool: str = "avg",
                 device: Optional[Union[str, torch.device]] = None, dtype: Optional[torch.dtype] = None,
                 **unknown: Any):
        if unknown:
            raise ConfigError(
                f"roadmap models take no argument {next(iter(unknown))!r}: they take num_classes, in_chans, "
                "drop_path_rate, drop_rate, global_pool, device and dtype, besides timm's own (pretrained, "
                "features_only, ...)"
            )
        _check_head(num_classes, global_pool, drop_rate)
        changes: Dict[str, Any] = dict(in_chans=in_chans, num_classes=num_classes or cfg.num_classes)
        if drop_path_rate is not None:
            changes["drop_path_rate"] = drop_path_rate
        with torch.device(device) if device is not None else contextlib.nullcontext():
            super().__init__(dataclasses.replace(cfg, **changes))
        if dtype is not None:
            self.to(dtype)
        self.num_classes, self.in_chans, self.global_pool = num_classes, in_chans, global_pool
        self.head_hidden_size = self.num_features
        self.head_drop = nn.Dropout(drop_rate) if drop_rate else nn.Identity()
        if num_classes == 0:
            self.fc = nn.Identity()
        stem_stride = self.cfg.total_stride // 2 ** (len(self.cfg.depths) - 1)
        self.feature_info = [
            dict(num_chs=chs, reduction=stem_stride * 2**i, module=f"stages.{i}")
            for i, chs in enumerate(self.cfg.stage_channels)
        ]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map, (B, C, H, W), as timm's models give it (ConvNet's are pooled)."""
        return self.stages(self.stem_norm(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pooling, the head's norm and dropout, and the classifier (unless pre_logits) on forward_features' map."""
        x = self.head_drop(self.head_norm(POOLS[self.global_pool](x)))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new classifier of `num_classes` outputs (0: none), initialised as the step initialises its own."""
        global_pool = self.global_pool if global_pool is None else global_pool
        _check_head(num_classes, global_pool, 0.0)
        self.num_classes, self.global_pool = num_classes, global_pool
        self.fc = self._classifier(num_classes)

    def _classifier(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        like = next(self.parameters())
        fc = nn.Linear(self.num_features, num_classes, device=like.device, dtype=like.dtype)
        if self.cfg.init is Init.trunc_normal and not fc.weight.is_meta:
            nn.init.trunc_normal_(fc.weight, std=0.02)
            nn.init.zeros_(fc.bias)
        return fc

    def forward_intermediates(self, x: torch.Tensor, indices: Union[int, List[int], None] = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Stage outputs, as timm's forward_intermediates gives them (features_only uses it).

        Args:
            x: the images.
            indices: the stages to return: all (None), the last n (an int), or these (a list).
            norm: must be False: the roadmap's final norm acts on pooled features, not on a stage's map.
            stop_early: stop after the last stage asked for.
            output_fmt: NCHW, the only layout.
            intermediates_only: return the stage outputs only, not (the last stage's map, the outputs).
        """
        from timm.models._features import feature_take_indices

        if norm or output_fmt != "NCHW":
            raise ConfigError("roadmap models give stage outputs in NCHW without a norm: use norm=False, NCHW")
        take, last = feature_take_indices(len(self.stages), indices)
        x, out = self.stem_norm(self.stem(x)), []
        for i, stage in enumerate(self.stages[: last + 1] if stop_early else self.stages):
            x = stage(x)
            if i in take:
                out.append(x)
        return out if intermediates_only else (x, out)

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last of `indices`, and the head (timm's FeatureGetterNet calls it).

        Args:
            indices: the stages to keep outputs of, as in forward_intermediates.
            prune_norm: drop the head's norm too.
            prune_head: drop the classifier (always, when stages are dropped).
        """
        from timm.models._features import feature_take_indices

        take, last = feature_take_indices(len(self.stages), indices)
        cut = last < len(self.stages) - 1
        self.stages = self.stages[: last + 1]
        if cut:
            self.num_features = self.head_hidden_size = self.feature_info[last]["num_chs"]
        if prune_norm or cut:
            self.head_norm = nn.Identity()
        if prune_head or cut:
            self.reset_classifier(0)
        return take

    def load_pretrained(self, checkpoint: Union[str, Mapping[str, torch.Tensor]]) -> None:
        """timm's hook for weights in layouts of their own (custom_load): the checkpoint through roadmap.weights,
        strictly, then adapted as timm adapts its own: a new classifier for another num_classes, the stem's weights
        through timm's adapt_input_conv for another in_chans.

        Args:
            checkpoint: a checkpoint file, or a state dict, in any layout roadmap.import_weights reads.
        """
        classes, chans = self.pretrained_cfg["num_classes"], self.pretrained_cfg["input_size"][0]
        head, stem = self.fc, self.stem.conv
        # the checkpoint's shapes, for a strict import
        self.fc = nn.Linear(self.num_features, classes)
        self.stem.conv = nn.Conv2d(chans, stem.out_channels, stem.kernel_size, stem.stride, stem.padding,
                                   bias=stem.bias is not None)
        try:
            import_weights(self, checkpoint)
            loaded_fc, loaded_stem = self.fc, self.stem.conv
        finally:
            self.fc, self.stem.conv = head, stem
        with torch.no_grad():
            if self.num_classes == classes:
                head.load_state_dict(loaded_fc.state_dict())
            stem.weight.copy_(_timm().adapt_input_conv(stem.in_channels, loaded_stem.weight, base_chans=chans))
            if stem.bias is not None:
                stem.bias.copy_(loaded_stem.bias)


# ----------------------------------------------------------------------------- the names and their configs


def model_name(regime: str, step: str) -> str:
    return f"roadmap_{regime}_{step}"


def timm_name(step: str, regime: str = "r50") -> str:
    """The timm (and torch.hub) name of a step in a regime, checked: `timm_name("gelu")` is 'roadmap_r50_gelu'."""
    if regime not in options("regime"):
        raise ConfigError(f"unknown regime '{regime}': choose one of {', '.join(options('regime'))}")
    if step not in available_steps():
        raise ConfigError(f"unknown step '{step}': choose one of {', '.join(available_steps())}")
    return model_name(regime, step)


def published_names() -> List[str]:
    return [model_name(regime, step) for regime, step in PUBLISHED]


@functools.lru_cache(maxsize=None)
def _composed(regime: str, step: str) -> Tuple[ModelConfig, Tuple[Tuple[str, Any], ...]]:
    cfg = compose(step, f"regime={regime}", IMAGENET)
    model, size = model_config(cfg), cfg.data.image_size
    recipe = dict(
        input_size=(cfg.data.channels, size, size), interpolation=str(cfg.recipe.interpolation), crop_pct=CROP_PCT,
        mean=tuple(cfg.data.mean), std=tuple(cfg.data.std), num_classes=cfg.data.num_classes,
        pool_size=(size // model.total_stride,) * 2, first_conv="stem.conv", classifier="fc",
    )
    return model, tuple(recipe.items())


def composed(regime: str, step: str) -> Tuple[ModelConfig, Dict[str, Any]]:
    """The step's network and its recipe's evaluation config (timm's pretrained_cfg fields), composed through Hydra
    once per process (a fresh copy each time)."""
    model, recipe = _composed(regime, step)
    return dataclasses.replace(model), dict(recipe)


def conf_reader() -> Callable[..., dict]:
    """A reader of conf/ files as plain data (YAML, no interpolation), each file read once."""

    @functools.lru_cache(maxsize=None)
    def read(*parts: str) -> dict:
        return yaml.load(config.CONF_DIR.joinpath(*parts).read_text(), Loader=YAML_LOADER) or {}

    return read


def recipe_of(step: str, read: Optional[Callable[..., dict]] = None) -> str:
    """The recipe a step selects: its own `override /recipe:` or that of the step it builds on, else the default
    config's. Read from the YAML without composing (composing all 51 networks takes many seconds, and registering
    must be quick); the tests check it against compose for every step."""
    read = read or conf_reader()
    own = parent = None
    for entry in read("step", f"{step}.yaml").get("defaults", []):
        if isinstance(entry, dict):
            own = entry.get("override /recipe", own)
        elif entry != "_self_":
            parent = entry.rpartition("/")[2]
    if own or parent:
        return own or recipe_of(parent, read)
    return next(e["recipe"] for e in read("config.yaml")["defaults"] if isinstance(e, dict) and "recipe" in e)


def registry_cfgs(pairs: List[Tuple[str, str]]) -> Dict[str, Dict[str, Any]]:
    """timm's pretrained cfgs of these (regime, step) networks, keyed 'name' or 'name.tag' (published weights)."""
    read, out = conf_reader(), {}
    data = read("data", "imagenet.yaml")
    for regime, step in pairs:
        change = (read("step", f"{step}.yaml").get("step") or {}).get("change", step)
        published = dict(PUBLISHED.get((regime, step), {}))
        tag = published.pop("tag", "")
        out[model_name(regime, step) + (f".{tag}" if tag else "")] = dict(
            input_size=(data["channels"], data["image_size"], data["image_size"]), num_classes=data["num_classes"],
            mean=tuple(data["mean"]), std=tuple(data["std"]), crop_pct=CROP_PCT, first_conv="stem.conv",
            classifier="fc", interpolation=read("recipe", f"{recipe_of(step, read)}.yaml")["interpolation"],
            description=f"{step} ({change}), {regime} regime", **PAPER, **published,
        )
    return out


# ----------------------------------------------------------------------------- building and registering


def _no_weights(name: str) -> str:
    return (f"{name} has no published weights: of the roadmap's networks only these ends have them: "
            f"{', '.join(published_names())}; load a checkpoint of your own with "
            "pretrained_cfg_overlay=dict(file=<path>)")


def _import_state_dict(state_dict: Mapping[str, torch.Tensor], model: TimmConvNet) -> Dict[str, torch.Tensor]:
    """timm's pretrained_filter_fn, for a state dict handed over in memory (pretrained_cfg_overlay=dict(state_dict=
    ...)): imported by load_pretrained, then handed back in the model's own layout."""
    model.load_pretrained(state_dict)
    return model.state_dict()


def create(regime: str, step: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """What timm.create_model("roadmap_{regime}_{step}", ...) calls.

    Args:
        regime: the regime (conf/regime/).
        step: the step (conf/step/).
        pretrained: load the published weights (the ends only), or the file pretrained_cfg_overlay names.
        **kwargs: timm's: pretrained_cfg, pretrained_cfg_overlay, features_only, out_indices, cache_dir, and
            TimmConvNet's (num_classes, in_chans, drop_path_rate, drop_rate, global_pool).
    """
    tm, name = _timm(), model_name(regime, step)
    model_cfg, recipe = composed(regime, step)
    overlay = {**recipe, **(kwargs.pop("pretrained_cfg_overlay", None) or {})}
    if kwargs.get("feature_cls", "getter") != "getter":
        raise ConfigError("roadmap models give features through forward_intermediates: leave feature_cls='getter'")
    if pretrained:
        overlay.setdefault("custom_load", True)  # timm hands the file to TimmConvNet.load_pretrained
        source = tm.resolve_pretrained_cfg(name, kwargs.get("pretrained_cfg"), overlay)
        if not (source.has_weights or source.state_dict):
            raise ConfigError(_no_weights(name))
    return tm.build_model_with_cfg(
        TimmConvNet, name, pretrained, pretrained_cfg_overlay=overlay, model_cfg=model_cfg,
        feature_cfg=dict(feature_cls="getter", out_indices=tuple(range(len(model_cfg.depths)))),
        pretrained_filter_fn=_import_state_dict, **kwargs,
    )


def _entry(regime: str, step: str) -> Callable[..., nn.Module]:
    def entry(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return create(regime, step, pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = model_name(regime, step)
    weights = "published weights: pretrained=True" if (regime, step) in PUBLISHED else "no published weights"
    entry.__doc__ = (f"The roadmap's {step} step in the {regime} regime ({weights}). Takes timm's keyword arguments: "
                     "num_classes, in_chans, drop_path_rate, drop_rate, global_pool, features_only, out_indices, "
                     "pretrained_cfg_overlay.")
    return entry


def register() -> List[str]:
    """Register every step of every regime with timm; the names. Names registered already are left alone: call it
    again after adding a step to conf/step/."""
    tm = _timm()
    pairs = [(regime, step) for regime in options("regime") for step in available_steps()]
    new = [(regime, step) for regime, step in pairs if not tm.is_model(model_name(regime, step))]
    default_cfgs.update(tm.generate_default_cfgs(registry_cfgs(new)))
    for regime, step in new:
        entry = tm.register_model(_entry(regime, step))
        globals()[entry.__name__] = entry  # register_model lists it in __all__, as timm's own modules define theirs
    return [model_name(regime, step) for regime, step in pairs]


# ----------------------------------------------------------------------------- registering when timm is imported


class _ThenLoader(importlib.abc.Loader):
    """A module's own loader, then `then()` once the module has run."""

    def __init__(self, loader: importlib.abc.Loader, then: Callable[[], None]):
        self.loader, self.then = loader, then

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self.loader  # the module sees its own loader
        self.loader.exec_module(module)
        self.then()

    def __getattr__(self, name: str):
        return getattr(self.loader, name)


class AfterImport(importlib.abc.MetaPathFinder):
    """A post-import hook: `then()` runs once the module `name` is first imported, from the import itself. It finds
    the module as the other finders do and wraps its loader; it finds nothing itself."""

    def __init__(self, name: str, then: Callable[[], None]):
        self.name, self.then, self.finding = name, then, False

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname != self.name or self.finding:
            return None
        self.finding = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self.finding = False
        if spec is None or spec.loader is None:
            return None
        spec.loader = _ThenLoader(spec.loader, self._done)
        return spec

    def _done(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        self.then()


def _register_or_warn() -> None:
    try:
        register()
    except Exception as e:  # a broken step file must not break `import timm`
        warnings.warn(f"roadmap could not register its timm models ({type(e).__name__}: {e}); "
                      "roadmap.register_timm() raises the error", stacklevel=2)


def register_when_imported() -> None:
    """Register the models with timm now if timm is imported, else when it is (what `import roadmap` does)."""
    if "timm" in sys.modules:
        _register_or_warn()
    elif not any(isinstance(f, AfterImport) and f.name == "timm" for f in sys.meta_path):
        sys.meta_path.insert(0, AfterImport("timm", _register_or_warn))
