"""Import published weights into the generator's networks, strictly.

Four layouts are recognised by their keys and renamed to ours:
  - torchvision's (and timm's) ResNet: conv1, bn1, layer1.0.conv1, ..., fc;
  - the official ConvNeXt checkpoints: downsample_layers, stages.i.j.dwconv, ...;
  - timm's ConvNeXt: stem.0, stages.i.blocks.j.conv_dw, mlp.fc1, ..., head.fc;
  - torchvision's ConvNeXt: features.k..., classifier.
and our own layout passes through unchanged. Linear weights become 1x1 conv weights
(and torchvision's (C,1,1) layer scales (C,)) by reshaping; nothing else may differ.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Tuple, Union

import torch
from torch import nn

from roadmap.errors import WeightImportError

Rule = Tuple[str, Union[str, Callable[[re.Match], str]]]

# Each layout: the key that identifies it, then renaming rules applied in order.
LAYOUTS: Dict[str, Tuple[str, List[Rule]]] = {
    "torchvision/timm ResNet": (
        "layer1.0.conv1.weight",
        [
            (r"^conv1\.", "stem.conv."),
            (r"^bn1\.", "stem.norm."),
            (r"^layer(\d)\.(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}."),
            (r"\.bn(\d)\.", r".norm\1."),
            (r"\.downsample\.0\.", ".shortcut.conv."),
            (r"\.downsample\.1\.", ".shortcut.norm."),
        ],
    ),
    "official ConvNeXt": (
        "downsample_layers.0.0.weight",
        [
            (r"^downsample_layers\.0\.0\.", "stem.conv."),
            (r"^downsample_layers\.0\.1\.", "stem_norm."),
            (r"^downsample_layers\.(\d+)\.0\.", r"stages.\1.downsample.norm."),
            (r"^downsample_layers\.(\d+)\.1\.", r"stages.\1.downsample.conv."),
            (r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2."),
            (r"\.dwconv\.", ".conv1."),
            (r"\.blocks\.(\d+)\.norm\.", r".blocks.\1.norm1."),
            (r"\.pwconv1\.", ".conv2."),
            (r"\.pwconv2\.", ".conv3."),
            (r"^norm\.", "head_norm."),
            (r"^head\.", "fc."),
        ],
    ),
    "timm ConvNeXt": (
        "stages.0.blocks.0.conv_dw.weight",
        [
            (r"^stem\.0\.", "stem.conv."),
            (r"^stem\.1\.", "stem_norm."),
            (r"\.downsample\.0\.", ".downsample.norm."),
            (r"\.downsample\.1\.", ".downsample.conv."),
            (r"\.conv_dw\.", ".conv1."),
            (r"\.blocks\.(\d+)\.norm\.", r".blocks.\1.norm1."),
            (r"\.mlp\.fc1\.", ".conv2."),
            (r"\.mlp\.fc2\.", ".conv3."),
            (r"^head\.norm\.", "head_norm."),
            (r"^head\.fc\.", "fc."),
        ],
    ),
    "torchvision ConvNeXt": (
        "features.1.0.block.0.weight",
        [
            (r"^features\.0\.0\.", "stem.conv."),
            (r"^features\.0\.1\.", "stem_norm."),
            # odd features are stages, even ones (after the stem) downsampling layers
            (
                r"^features\.(\d+)\.(\d+)\.(?=block|layer_scale)",
                lambda m: f"stages.{(int(m[1]) - 1) // 2}.blocks.{m[2]}.",
            ),
            (r"^features\.(\d+)\.0\.", lambda m: f"stages.{int(m[1]) // 2}.downsample.norm."),
            (r"^features\.(\d+)\.1\.", lambda m: f"stages.{int(m[1]) // 2}.downsample.conv."),
            (r"\.block\.0\.", ".conv1."),
            (r"\.block\.2\.", ".norm1."),
            (r"\.block\.3\.", ".conv2."),
            (r"\.block\.5\.", ".conv3."),
            (r"\.layer_scale$", ".gamma"),
            (r"^classifier\.0\.", "head_norm."),
            (r"^classifier\.2\.", "fc."),
        ],
    ),
}


def _unwrap(state_dict: Mapping) -> Dict[str, torch.Tensor]:
    """Accept a checkpoint wrapping its state dict ({"model": ...}) and DDP or
    torch.compile prefixes."""
    for key in ("model", "state_dict", "model_state"):
        if key in state_dict and isinstance(state_dict[key], Mapping):
            state_dict = state_dict[key]
    sd = dict(state_dict)
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    for name, (signature, _) in LAYOUTS.items():
        if signature in state_dict:
            return name
    return "roadmap"


def rename(state_dict: Mapping[str, torch.Tensor], layout: str) -> Dict[str, torch.Tensor]:
    if layout == "roadmap":
        return dict(state_dict)
    rules = LAYOUTS[layout][1]
    out = {}
    for key, value in state_dict.items():
        new = key
        for pattern, repl in rules:
            new = re.sub(pattern, repl, new)
        out[new] = value
    return out


def _listing(keys: List[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _read(source) -> Mapping:
    """A state dict, or the checkpoint file a path names."""
    if isinstance(source, Mapping):
        return source
    if isinstance(source, (str, os.PathLike)):
        if not Path(source).is_file():
            raise WeightImportError(
                f"import_weights: no file {str(source)!r}: give a state dict or the path of a checkpoint"
            )
        try:
            return torch.load(source, map_location="cpu", weights_only=True)
        except Exception as e:
            raise WeightImportError(f"import_weights: {source} is not a readable checkpoint ({type(e).__name__}): "
                                    "give a file written by torch.save") from e
    raise WeightImportError(f"import_weights: expected a state dict or a checkpoint path, got {type(source).__name__}")


def import_weights(model: nn.Module, state_dict: Union[Mapping, str, os.PathLike]) -> nn.Module:
    """Load a torchvision/timm ResNet, an official/timm/torchvision ConvNeXt, or our own
    state dict (or the checkpoint file a path names) into `model`. Strict: every tensor is
    used and every parameter and buffer set, else WeightImportError naming what is missing,
    left over or of the wrong shape."""
    sd = _unwrap(_read(state_dict))
    bad = next((k for k, v in sd.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None or not sd:
        raise WeightImportError(
            f"import_weights: {'the state dict is empty' if not sd else repr(bad) + ' is not a tensor'}: "
            "give a model's state_dict() or a checkpoint holding one"
        )
    layout = detect_layout(sd)
    sd = rename(sd, layout)
    target = model.state_dict()
    missing = [k for k in target if k not in sd]
    unused = [k for k in sd if k not in target]
    if missing or unused:
        parts = []
        if unused:
            parts.append(f"{len(unused)} tensor(s) of the state dict fit nothing in the model: {_listing(unused)}")
        if missing:
            parts.append(f"{len(missing)} of the model's tensor(s) are not in the state dict: {_listing(missing)}")
        raise WeightImportError(f"import_weights ({layout} layout): " + "; ".join(parts))
    loaded = {}
    for key, value in sd.items():
        want = target[key].shape
        if value.shape != want:
            if value.numel() != want.numel():
                raise WeightImportError(
                    f"import_weights ({layout} layout): {key} has shape {tuple(value.shape)} "
                    f"in the state dict but {tuple(want)} in the model"
                )
            value = value.reshape(want)  # Linear -> 1x1 conv, (C,1,1) -> (C,)
        loaded[key] = value
    model.load_state_dict(loaded, strict=True)
    return model
