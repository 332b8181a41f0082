"""timm's RandAugment, the paper's policy (`rand-m9-mstd0.5-inc1`), for a whole batch on
the training device, with every random draw made per image.

The policy is timm's `rand_augment_transform` as the official ConvNeXt code builds it
(`create_transform(..., auto_augment='rand-m9-mstd0.5-inc1', interpolation='bicubic')`):
for each of `n` slots every image draws one of 15 ops (uniformly, with replacement), and
applies it with probability `p` = 0.5, at a magnitude drawn from N(m, mstd) clipped to
[0, 10]; ops with a direction (rotate, shear, translate, the increasing enhancements) take
either sign with probability 1/2. Geometric ops resample with the recipe's interpolation
and fill with the data's mean colour (timm's `img_mean` hparam).

Each op reproduces the PIL operation that timm calls, on uint8 values (held in a float
tensor): the same lookup tables (autocontrast, equalize, posterize, solarize), the same
integer grey conversion, float32 blends truncated as ImageEnhance's, the SMOOTH filter
for sharpness, and PIL's own affine resampling (its bicubic is a cubic convolution with
a = -1, its bilinear clamps at the border, both sample pixel centres and truncate). The
tests compare every op with timm's on real images (tests/test_randaugment.py).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from roadmap.errors import ConfigError

LEVEL_DENOM = 10.0  # timm's _LEVEL_DENOM: magnitude m gives level m / 10
# timm's _RAND_INCREASING_TRANSFORMS (inc1, the paper's) and _RAND_TRANSFORMS (inc0), in timm's order
INCREASING_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
    "TranslateXRel", "TranslateYRel",
)
OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast",
    "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
# Geometric ops resampled in one call: those that move images along x only, along y only, and rotation
RESAMPLED_TOGETHER = (("ShearX", "TranslateXRel"), ("ShearY", "TranslateYRel"), ("Rotate",))


# ----------------------------------------------------------------------------- the policy string


@dataclass(frozen=True)
class Policy:
    """timm's RandAugment config string, parsed: `rand-m9-mstd0.5-inc1` is magnitude 9,
    magnitude std 0.5, the increasing op set, and timm's defaults n=2, p=0.5."""

    magnitude: float = 9.0
    num_ops: int = 2
    magnitude_std: float = 0.0
    """0: the magnitude as given; inf (timm's mstd > 100): uniform in [0, m]."""
    magnitude_max: Optional[float] = None
    """Upper clip of the drawn magnitude; None: 10."""
    increasing: bool = False
    prob: float = 0.5
    """Each drawn op is applied with this probability."""

    @classmethod
    def parse(cls, text: str) -> "Policy":
        parts = text.split("-")
        if parts[0] != "rand":
            raise ConfigError(
                f"recipe.randaugment={text} is not a RandAugment policy: write timm's form, e.g. rand-m9-mstd0.5-inc1"
            )
        fields: Dict[str, object] = {}
        for part in parts[1:]:
            m = re.fullmatch(r"(mstd|mmax|inc|m|n|p)(\d+(\.\d+)?)", part)
            if not m:
                raise ConfigError(
                    f"recipe.randaugment={text} has '{part}': "
                    "use m<int>, n<int>, mstd<float>, mmax<int>, inc<0|1>, p<float>"
                )
            key, value = m[1], float(m[2])
            name = {
                "m": "magnitude",
                "n": "num_ops",
                "mstd": "magnitude_std",
                "mmax": "magnitude_max",
                "inc": "increasing",
                "p": "prob",
            }[key]
            fields[name] = int(value) if key in ("n",) else bool(value) if key == "inc" else value
        if fields.get("magnitude_std", 0) > 100:
            fields["magnitude_std"] = math.inf
        return cls(**fields)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        """The policy as timm writes it (parse(p.name) == p)."""
        out = [f"rand-m{_num(self.magnitude)}"]
        if self.num_ops != 2:
            out.append(f"n{self.num_ops}")
        if self.magnitude_std:
            out.append(f"mstd{'101' if math.isinf(self.magnitude_std) else _num(self.magnitude_std)}")
        if self.magnitude_max is not None:
            out.append(f"mmax{_num(self.magnitude_max)}")
        if self.increasing:
            out.append("inc1")
        if self.prob != 0.5:
            out.append(f"p{_num(self.prob)}")
        return "-".join(out)

    @property
    def ops(self) -> Tuple[str, ...]:
        return INCREASING_OPS if self.increasing else OPS

    def scaled(self, factor: float) -> "Policy":
        """The policy at `factor` times its magnitude (the recipe's regularization knob)."""
        return replace(self, magnitude=self.magnitude * factor)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


# ----------------------------------------------------------------------------- magnitudes -> arguments

Level = torch.Tensor  # float64, per image: the clipped magnitude / 10
Sign = torch.Tensor  # float64, per image: +1 or -1 (used where timm's _randomly_negate is)


def _enhance(level: Level, sign: Sign) -> torch.Tensor:
    return level * 1.8 + 0.1


def _enhance_increasing(level: Level, sign: Sign) -> torch.Tensor:
    return torch.clamp(1.0 + sign * (level * 0.9), min=0.1)


# timm's LEVEL_TO_ARG, in float64 with timm's operation order (int() of a non-negative value is floor)
LEVEL_TO_ARG: Dict[str, Callable[[Level, Sign], torch.Tensor]] = {
    "Rotate": lambda level, sign: sign * (level * 30.0),
    "Posterize": lambda level, sign: torch.floor(level * 4),
    "PosterizeIncreasing": lambda level, sign: 4 - torch.floor(level * 4),
    "Solarize": lambda level, sign: torch.clamp(torch.floor(level * 256), max=256),
    "SolarizeIncreasing": lambda level, sign: 256 - torch.clamp(torch.floor(level * 256), max=256),
    "SolarizeAdd": lambda level, sign: torch.clamp(torch.floor(level * 110), max=128),
    "Color": _enhance,
    "Contrast": _enhance,
    "Brightness": _enhance,
    "Sharpness": _enhance,
    "ColorIncreasing": _enhance_increasing,
    "ContrastIncreasing": _enhance_increasing,
    "BrightnessIncreasing": _enhance_increasing,
    "SharpnessIncreasing": _enhance_increasing,
    "ShearX": lambda level, sign: sign * (level * 0.3),
    "ShearY": lambda level, sign: sign * (level * 0.3),
    "TranslateXRel": lambda level, sign: sign * (level * 0.45),
    "TranslateYRel": lambda level, sign: sign * (level * 0.45),
}


# ----------------------------------------------------------------------------- colour ops (uint8 values in float)


def _per_image(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.device).view(-1, *([1] * (x.dim() - 1)))


def grey(x: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16; grey images as they are."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.to(torch.int64).unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).unsqueeze(1).to(x.dtype)


def blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Image.blend(degenerate, image, factor) as PIL computes it: in float32, clipped, truncated."""
    f = _per_image(factor.to(torch.float32), x)
    d = degenerate.to(torch.float32)
    out = d + f * (x.to(torch.float32) - d)
    return torch.floor(out.clamp(0, 255)).to(x.dtype)


def smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's ImageFilter.SMOOTH (3x3 ones, centre 5, /13; border pixels kept), in float32 as
    PIL sums it: rows below, centre, above, each left to right, then truncated after +0.5."""
    k1, k5 = torch.tensor(1.0 / 13, dtype=torch.float32), torch.tensor(5.0 / 13, dtype=torch.float32)
    v = x.to(torch.float32)
    row = lambda r, centre: (v[..., r, :-2] * k1 + v[..., r, 1:-1] * centre) + v[..., r, 2:] * k1  # noqa: E731
    h = x.shape[-2]
    below, middle, above = row(slice(2, h), k1), row(slice(1, h - 1), k5), row(slice(0, h - 2), k1)
    inner = ((torch.tensor(0.5) + below) + middle) + above
    out = x.clone()
    out[..., 1:-1, 1:-1] = torch.floor(inner.clamp(0, 255)).to(x.dtype)
    return out


def autocontrast(x: torch.Tensor, _arg=None) -> torch.Tensor:
    """ImageOps.autocontrast: per image and channel, lo..hi stretched to 0..255 (int())."""
    lo = x.amin((2, 3), keepdim=True).to(torch.float64)
    hi = x.amax((2, 3), keepdim=True).to(torch.float64)
    scale = 255.0 / (hi - lo).clamp_min(1)
    out = torch.trunc(x.to(torch.float64) * scale + (-lo * scale)).clamp(0, 255)
    return torch.where(hi > lo, out, x.to(torch.float64)).to(x.dtype)


def equalize(x: torch.Tensor, _arg=None) -> torch.Tensor:
    """ImageOps.equalize: per image and channel, PIL's lookup table from the histogram."""
    n, c = x.shape[:2]
    flat = x.to(torch.int64).reshape(n * c, -1)
    hist = torch.zeros(n * c, 256, dtype=torch.int64, device=x.device).scatter_add_(1, flat, torch.ones_like(flat))
    last = hist.gather(1, flat.amax(1, keepdim=True))  # the count of the highest value present
    step = (flat.shape[1] - last) // 255
    before = hist.cumsum(1) - hist  # pixels below each value
    lut = torch.div(step // 2 + before, step.clamp_min(1), rounding_mode="floor")
    identity = ((hist > 0).sum(1, keepdim=True) <= 1) | (step == 0)
    lut = torch.where(identity, torch.arange(256, device=x.device), lut.clamp(max=255))  # point() clips
    return lut.gather(1, flat).reshape(x.shape).to(x.dtype)


def invert(x: torch.Tensor, _arg=None) -> torch.Tensor:
    return 255 - x


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """ImageOps.posterize: keep the top `bits` bits (0 bits: black, as PIL before 10.0)."""
    drop = _per_image(2 ** (8 - bits), x).to(x.dtype)
    return torch.floor(x / drop) * drop


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.where(x < _per_image(threshold, x).to(x.dtype), x, 255 - x)


def solarize_add(x: torch.Tensor, add: torch.Tensor, threshold: float = 128) -> torch.Tensor:
    return torch.where(x < threshold, (x + _per_image(add, x).to(x.dtype)).clamp(max=255), x)


def enhance_color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Color: towards the image's grey version."""
    return blend(grey(x).expand_as(x), x, factor)


def enhance_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Contrast: towards the grey mean, int(mean + 0.5)."""
    mean = torch.floor(grey(x).to(torch.float64).mean((1, 2, 3), keepdim=True) + 0.5)
    return blend(mean.expand_as(x).to(x.dtype), x, factor)


def enhance_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Brightness: towards black."""
    return blend(torch.zeros_like(x), x, factor)


def enhance_sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Sharpness: towards PIL's SMOOTH filter of the image."""
    return blend(smooth(x), x, factor)


COLOUR_OPS: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "AutoContrast": autocontrast,
    "Equalize": equalize,
    "Invert": invert,
    "Posterize": posterize,
    "PosterizeIncreasing": posterize,
    "Solarize": solarize,
    "SolarizeIncreasing": solarize,
    "SolarizeAdd": solarize_add,
    "Color": enhance_color,
    "ColorIncreasing": enhance_color,
    "Contrast": enhance_contrast,
    "ContrastIncreasing": enhance_contrast,
    "Brightness": enhance_brightness,
    "BrightnessIncreasing": enhance_brightness,
    "Sharpness": enhance_sharpness,
    "SharpnessIncreasing": enhance_sharpness,
}


# ----------------------------------------------------------------------------- geometric ops: PIL's affine resampling


def affine_matrix(name: str, arg: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """PIL's AFFINE data (a, b, c, d, e, f) per image, as timm's op builds it: an output
    pixel centre (x, y) samples the input at (a x + b y + c, d x + e y + f)."""
    n = len(arg)
    m = torch.zeros(n, 6, dtype=torch.float64)
    m[:, 0] = m[:, 4] = 1.0
    if name == "ShearX":
        m[:, 1] = arg
    elif name == "ShearY":
        m[:, 3] = arg
    elif name == "TranslateXRel":
        m[:, 2] = arg * width
    elif name == "TranslateYRel":
        m[:, 5] = arg * height
    else:  # Rotate: Image.rotate(degrees) about the centre
        angle = -torch.deg2rad(torch.remainder(arg, 360.0))
        cos, sin = _round15(torch.cos(angle)), _round15(torch.sin(angle))
        cx, cy = width / 2.0, height / 2.0
        m[:, 0], m[:, 1], m[:, 3], m[:, 4] = cos, sin, -sin, cos
        m[:, 2] = cos * -cx + sin * -cy + 0.0 + cx
        m[:, 5] = -sin * -cx + cos * -cy + 0.0 + cy
    return m


def _round15(v: torch.Tensor) -> torch.Tensor:
    return torch.round(v * 1e15) / 1e15


def _cubic(v1, v2, v3, v4, d):
    """PIL's BICUBIC macro, a cubic convolution with a = -1, rounding as PIL does:
    v2 + d (p2 + d (p3 + d p4)), p2 = v3 - v1, p3 = 2 (v1 - v2) + v3 - v4, p4 = v2 - v1 - v3 + v4."""
    p2 = v3 - v1
    p3 = (v1 - v2).mul_(2).add_(v3).sub_(v4)
    p4 = (v2 - v1).sub_(v3).add_(v4)
    return p4.mul_(d).add_(p3).mul_(d).add_(p2).mul_(d).add_(v2)


def resample(x: torch.Tensor, matrix: torch.Tensor, fill: Sequence[float], mode: str = "bicubic",
             moves: Optional[Tuple[bool, bool]] = None) -> torch.Tensor:
    """Image.transform(size, AFFINE, matrix, resample, fillcolor) for a batch: float64 as PIL,
    edge pixels clamped, samples outside the image filled, values clipped and truncated.
    All taps come from one gather; the cubic is PIL's, evaluated in PIL's order. An axis the
    matrix leaves alone (shears and translations move along one axis) samples pixel centres,
    where PIL's filter weighs the centre tap 1 exactly: one tap there instead of four.
    `moves` (along x, along y) as `moves_along` gives it, for a matrix already on the device."""
    n, c, h, w = x.shape
    a = matrix.to(x.device).view(n, 6, 1, 1)
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=torch.float64) + 0.5,
                            torch.arange(w, device=x.device, dtype=torch.float64) + 0.5, indexing="ij")
    sx = a[:, 0] * xs + a[:, 1] * ys + a[:, 2]
    sy = a[:, 3] * xs + a[:, 4] * ys + a[:, 5]
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    sx, sy = sx - 0.5, sy - 0.5
    x0, y0 = torch.floor(sx), torch.floor(sy)
    dx, dy = sx - x0, sy - y0
    moves_x, moves_y = moves if moves is not None else moves_along(matrix)
    taps = range(-1, 3) if mode == "bicubic" else range(0, 2)
    x_taps, y_taps = (taps if moves_x else range(1)), (taps if moves_y else range(1))
    rows = torch.stack([(y0 + j).clamp(0, h - 1) for j in y_taps], 1).long() * w  # (n, k, h, w)
    src = x.to(torch.float64).reshape(n, c, h * w)
    k = len(y_taps)

    def column(i: int) -> torch.Tensor:  # the tap at column offset i, for every row tap: (n, c, k, h, w)
        index = rows + (x0 + i).clamp(0, w - 1).long().unsqueeze(1)
        return src.gather(2, index.view(n, 1, -1).expand(n, c, -1)).view(n, c, k, h, w)

    v = _interpolate(mode, [column(i) for i in x_taps], dx.view(n, 1, 1, h, w)) if moves_x else column(0)
    v = _interpolate(mode, v.unbind(2), dy.view(n, 1, h, w)) if moves_y else v[:, :, 0]
    v = torch.trunc(v.clamp(0, 255))
    return torch.where(inside.unsqueeze(1), v, _fill_value(tuple(fill), x.device)).to(x.dtype)


@functools.lru_cache(maxsize=16)
def _fill_value(fill: Tuple[float, ...], device: torch.device) -> torch.Tensor:
    """The fill colour as a (1, C, 1, 1) float64 tensor on `device`, copied there once."""
    return torch.tensor(list(fill), dtype=torch.float64).view(1, -1, 1, 1).to(device)


def moves_along(matrix: torch.Tensor) -> Tuple[bool, bool]:
    """Whether the affine matrices (n, 6) move any image along x, along y (read on the host)."""
    return _moves(matrix[:, :3], (1.0, 0.0, 0.0)), _moves(matrix[:, 3:], (0.0, 1.0, 0.0))


def _moves(rows: torch.Tensor, identity: Tuple[float, float, float]) -> bool:
    """Whether the matrix rows (n, 3) move any image along their axis."""
    return not bool((rows == torch.tensor(identity, dtype=rows.dtype)).all())


def _interpolate(mode: str, taps: Sequence[torch.Tensor], d: torch.Tensor) -> torch.Tensor:
    """PIL's filter over the taps at fractional offset d: its cubic, or the linear blend."""
    if mode == "bicubic":
        return _cubic(*taps, d)
    left, right = taps
    return left + (right - left) * d


# ----------------------------------------------------------------------------- the batched policy


class RandAugment:
    """A RandAugment policy for batches of uint8-valued float images (N, C, H, W), C = 1 or 3."""

    def __init__(self, policy: Policy, fill: Sequence[float], interpolation: str = "bicubic"):
        if interpolation not in ("bicubic", "bilinear"):
            raise ConfigError(f"RandAugment resamples bicubic or bilinear, not {interpolation}")
        self.policy, self.fill, self.interpolation = policy, tuple(fill), interpolation
        self.ops = policy.ops
        # What one call applies: each colour op alone, the geometric ops that move the same axes together
        self.groups = [(name,) for name in self.ops if name not in GEOMETRIC] + list(RESAMPLED_TOGETHER)
        in_order = [name for group in self.groups for name in group]
        self.position = torch.tensor([in_order.index(name) for name in self.ops])  # op index -> place in the groups

    def draw(self, n: int, g: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One slot's draws for n images: the op (index into self.ops, -1 where the op is not
        applied), its level (clipped magnitude / 10, float64) and its sign."""
        p = self.policy
        op = torch.randint(len(self.ops), (n,), generator=g)
        applied = torch.rand(n, generator=g, dtype=torch.float64) <= p.prob
        magnitude = torch.full((n,), float(p.magnitude), dtype=torch.float64)
        if math.isinf(p.magnitude_std):
            magnitude = torch.rand(n, generator=g, dtype=torch.float64) * p.magnitude
        elif p.magnitude_std > 0:
            magnitude = magnitude + p.magnitude_std * torch.randn(n, generator=g, dtype=torch.float64)
        level = magnitude.clamp(0.0, p.magnitude_max or LEVEL_DENOM) / LEVEL_DENOM
        sign = torch.where(torch.rand(n, generator=g, dtype=torch.float64) > 0.5, -1.0, 1.0).to(torch.float64)
        return torch.where(applied, op, -1), level, sign

    def apply(self, x: torch.Tensor, name: str, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        """One op on every image of x, at each image's level and sign."""
        if name in GEOMETRIC:
            return self.apply_geometric(x, [name], [len(x)], level, sign)
        to_arg = LEVEL_TO_ARG.get(name)
        return COLOUR_OPS[name](x, to_arg(level, sign) if to_arg is not None else None)

    def apply_geometric(self, x: torch.Tensor, names: Sequence[str], counts: Sequence[int], level: torch.Tensor,
                        sign: torch.Tensor) -> torch.Tensor:
        """Geometric ops on consecutive runs of images (`counts[i]` images get `names[i]`), in
        one resampling: each image's result is the one its own op gives alone."""
        matrices, start = [], 0
        for name, count in zip(names, counts):
            part = slice(start, start + count)
            matrices.append(affine_matrix(name, LEVEL_TO_ARG[name](level[part], sign[part]), x.shape[-2], x.shape[-1]))
            start += count
        return resample(x, torch.cat(matrices), self.fill, self.interpolation)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return self.apply_plan(x, self.plan(len(x), g, x.shape[-2], x.shape[-1]))

    def plan(self, n: int, g: torch.Generator, height: int, width: int) -> List["Slot"]:
        """Every slot's draws for n images of height x width, and what they make of them, on
        the host: the order that sorts the images by the op they drew, in the groups' order,
        and each group's rows and argument. Each group then acts on one contiguous slice, with
        one gather before and one scatter after instead of an index/index_put per op."""
        slots = []
        for _ in range(self.policy.num_ops):
            op, level, sign = self.draw(n, g)
            place = torch.where(op >= 0, self.position[op.clamp(min=0)], -1)
            order = place.argsort(stable=True)
            level, sign = level[order], sign[order]
            ends = torch.bincount(place + 1, minlength=len(self.ops) + 1).cumsum(0).tolist()  # [0]: not applied
            steps, k = [], 0
            for group in self.groups:
                a, b = ends[k], ends[k + len(group)]
                if b > a:
                    counts = [ends[k + i + 1] - ends[k + i] for i in range(len(group))]
                    steps.append(self._step(group, counts, a, b, level[a:b], sign[a:b], height, width))
                k += len(group)
            slots.append(Slot(order, steps))
        return slots

    def _step(self, group: Tuple[str, ...], counts: List[int], a: int, b: int, level: torch.Tensor,
              sign: torch.Tensor, height: int, width: int) -> "Step":
        """One group's op on rows a:b: a colour op's argument, or the geometric ops' matrices."""
        if group[0] not in GEOMETRIC:
            to_arg = LEVEL_TO_ARG.get(group[0])
            return Step(a, b, group, to_arg(level, sign) if to_arg is not None else None)
        matrices, start = [], 0
        for name, count in zip(group, counts):
            part = slice(start, start + count)
            matrices.append(affine_matrix(name, LEVEL_TO_ARG[name](level[part], sign[part]), height, width))
            start += count
        matrix = torch.cat(matrices)
        return Step(a, b, group, matrix, moves_along(matrix))

    def apply_plan(self, x: torch.Tensor, slots: List["Slot"]) -> torch.Tensor:
        """The planned ops on x, slot after slot; the plan's tensors on x's device or the host."""
        for slot in slots:
            d = slot.order.to(x.device)
            y = x[d]
            for s in slot.steps:
                if s.names[0] in GEOMETRIC:
                    y[s.start:s.stop] = resample(y[s.start:s.stop], s.arg, self.fill, self.interpolation, s.moves)
                else:
                    y[s.start:s.stop] = COLOUR_OPS[s.names[0]](y[s.start:s.stop], s.arg)
            x[d] = y
        return x


@dataclass
class Step:
    """One op of a slot, on the rows start:stop of the images sorted by op."""

    start: int
    """The first row it acts on."""
    stop: int
    """One past the last."""
    names: Tuple[str, ...]
    """A colour op, or the geometric ops that share one resampling."""
    arg: Optional[torch.Tensor]
    """A colour op's argument per image (None for those without), or the affine matrices (rows, 6)."""
    moves: Tuple[bool, bool] = (True, True)
    """Geometric: whether any matrix moves an image along x, along y."""


@dataclass
class Slot:
    """One slot of the policy for a batch: what RandAugment.plan drew and derived."""

    order: torch.Tensor
    """The images sorted by the op they drew (indices into the batch)."""
    steps: List[Step] = field(default_factory=list)
    """The ops applied, each on its contiguous rows of the sorted batch."""


def fill_colour(mean: Sequence[float]) -> Tuple[int, ...]:
    """timm's img_mean hparam: the data's mean colour in uint8."""
    return tuple(min(255, round(255 * m)) for m in mean)
