"""The recipe's augmentation, applied to a whole batch on the training device, with
every random draw made per image, as the paper's per-image pipeline does.

A torchvision v2 transform given a batch tensor draws its parameters once for the
whole batch; applied image by image it costs more than a training step of the small
models (122 ms per 256 Fashion-MNIST images on 2 CPU cores). So here each stage draws
a vector of parameters, one per image, and applies them in one tensor operation:

- random resized crop (torchvision's sampling: scale, log-uniform ratio, 10 tries,
  then the whole image) and horizontal flip: one `grid_sample` with one affine
  matrix per image (bicubic, as the paper);
- RandAugment (`rand-m{M}-mstd{S}`, the paper's timm policy with torchvision's 14 ops):
  for each of the N op slots every image draws an op, a magnitude ~ N(M, S) on the
  0..10 scale and a sign; the geometric ops (shear, translate, rotate) become one more
  affine warp, the colour ops act on the images that drew them, `equalize` is
  torchvision's;
- normalization, then random erasing (timm's per-pixel noise, one box per image).
MixUp and CutMix are torchvision's v2 transforms, one mixing weight per batch, as in
the paper (timm's batch mode).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

OPS = (
    "identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate",
    "brightness", "color", "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize",
)
GEOMETRIC = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")


def _first_valid(valid: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Index of the first True of each row, and whether a row has any."""
    any_ = valid.any(1)
    return valid.float().argmax(1), any_


def _draw_boxes(n: int, height: int, width: int, scale: Sequence[float], ratio: Sequence[float], g: torch.Generator,
                aspect_on_width: bool, strict: bool, tries: int = 10) -> Tuple[torch.Tensor, torch.Tensor]:
    """Boxes of random area (a `scale` fraction of the image) and log-uniform aspect,
    `tries` per image, the first that fits kept, placed uniformly: (n, 4) as top, left,
    h, w, and whether any try fitted. torchvision's crop puts the aspect on the width;
    timm's erasing on the height and wants the box strictly inside."""
    target = height * width * torch.empty(n, tries).uniform_(scale[0], scale[1], generator=g)
    aspect = torch.exp(torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g))
    along, across = torch.sqrt(target * aspect).round(), torch.sqrt(target / aspect).round()
    w, h = (along, across) if aspect_on_width else (across, along)
    fits = (w < width) & (h < height) if strict else (w <= width) & (h <= height)
    pick, ok = _first_valid(fits & (w > 0) & (h > 0))
    rows = torch.arange(n)
    w, h = w[rows, pick], h[rows, pick]
    top = (torch.rand(n, generator=g) * (height - h + 1)).floor()
    left = (torch.rand(n, generator=g) * (width - w + 1)).floor()
    return torch.stack([top, left, h, w], 1), ok


def sample_boxes(n: int, height: int, width: int, scale: Sequence[float], ratio: Sequence[float],
                 g: torch.Generator, tries: int = 10) -> torch.Tensor:
    """torchvision's RandomResizedCrop box sampling, for n images at once: (n, 4) as
    top, left, h, w; the whole image where no try fits."""
    boxes, ok = _draw_boxes(n, height, width, scale, ratio, g, aspect_on_width=True, strict=False, tries=tries)
    return torch.where(ok[:, None], boxes, torch.tensor([0.0, 0.0, height, width]))


def crop_flip_theta(boxes: torch.Tensor, flip: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Affine matrices (for affine_grid, align_corners=False) that map the output onto
    each box, mirrored where `flip`."""
    top, left, h, w = boxes.unbind(1)
    theta = torch.zeros(len(boxes), 2, 3)
    theta[:, 0, 0] = w / width * torch.where(flip, -1.0, 1.0)
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    return theta


def warp(x: torch.Tensor, theta: torch.Tensor, mode: str) -> torch.Tensor:
    """grid_sample with one affine matrix per image. The grid is affine_grid's, built
    from the pixel-centre coordinates by broadcasting (8x faster than affine_grid for
    small images)."""
    n, _, h, w = x.shape
    t = theta.to(x.device, x.dtype)
    xs = (torch.arange(w, device=x.device, dtype=x.dtype) * 2 + 1) / w - 1  # pixel centres in [-1, 1]
    ys = (torch.arange(h, device=x.device, dtype=x.dtype) * 2 + 1) / h - 1
    # x' = t00 x + t01 y + t02 and y' = t10 x + t11 y + t12, as (n, h, w)
    gx = t[:, 0, 0, None, None] * xs + (t[:, 0, 1, None] * ys + t[:, 0, 2, None])[:, :, None]
    gy = t[:, 1, 0, None, None] * xs + (t[:, 1, 1, None] * ys + t[:, 1, 2, None])[:, :, None]
    return F.grid_sample(x, torch.stack([gx, gy], -1), mode=mode, padding_mode="zeros", align_corners=False)


def _grey(x: torch.Tensor) -> torch.Tensor:
    return x if x.shape[1] == 1 else TF.rgb_to_grayscale(x)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """a * f + b * (1 - f), per image; PIL's ImageEnhance, as torchvision."""
    f = factor.view(-1, 1, 1, 1).to(a.dtype)
    return (a * f + b * (1 - f)).clamp_(0, 1)


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter (3x3 ones, centre 5, /13) with its borders kept, as
    torchvision's adjust_sharpness: the 3x3 sum plus 4x the centre, through avg_pool2d."""
    inner = (F.avg_pool2d(x, 3, 1) * 9 + 4 * x[..., 1:-1, 1:-1]) / 13
    result = x.clone()
    result[..., 1:-1, 1:-1] = inner
    return result


class RandAugment:
    """RandAugment with per-image draws; see the module docstring."""

    def __init__(self, num_ops: int, magnitude: float, magnitude_std: float = 0.0):
        self.num_ops, self.magnitude, self.magnitude_std = num_ops, magnitude, magnitude_std

    def geometric_theta(self, op: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        """One affine matrix per image: identity unless it drew a geometric op."""
        n = len(op)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        s = sign * level
        shear, shift, angle = 0.3 * s, 2 * 0.45 * s, math.radians(30.0) * s  # torchvision's / timm's maxima
        is_ = {name: op == OPS.index(name) for name in GEOMETRIC}
        theta[:, 0, 1] = torch.where(is_["shear_x"], shear, theta[:, 0, 1])
        theta[:, 1, 0] = torch.where(is_["shear_y"], shear, theta[:, 1, 0])
        theta[:, 0, 2] = torch.where(is_["translate_x"], shift, theta[:, 0, 2])
        theta[:, 1, 2] = torch.where(is_["translate_y"], shift, theta[:, 1, 2])
        cos, sin = torch.cos(angle), torch.sin(angle)
        rot = is_["rotate"]
        theta[:, 0, 0] = torch.where(rot, cos, theta[:, 0, 0])
        theta[:, 0, 1] = torch.where(rot, -sin, theta[:, 0, 1])
        theta[:, 1, 0] = torch.where(rot, sin, theta[:, 1, 0])
        theta[:, 1, 1] = torch.where(rot, cos, theta[:, 1, 1])
        return theta

    def colour(self, name: str, x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        factor = (1.0 + 0.9 * sign * level).to(x.device)
        if name == "brightness":
            return _blend(x, torch.zeros_like(x), factor)
        if name == "color":
            return _blend(x, _grey(x).expand_as(x), factor)
        if name == "contrast":
            return _blend(x, _grey(x).mean((1, 2, 3), keepdim=True).expand_as(x), factor)
        if name == "sharpness":
            return _blend(x, _smooth(x), factor)
        if name == "posterize":
            bits = (8 - (4 * level).round()).to(x.device).view(-1, 1, 1, 1)
            step = 2 ** (8 - bits)
            return ((x * 255).round() / step).floor() * step / 255
        if name == "solarize":
            threshold = (1.0 - level).to(x.device, x.dtype).view(-1, 1, 1, 1)
            return torch.where(x >= threshold, 1.0 - x, x)
        if name == "autocontrast":
            lo = x.amin((2, 3), keepdim=True)
            hi = x.amax((2, 3), keepdim=True)
            scale = torch.where(hi > lo, 1.0 / (hi - lo).clamp_min(1e-6), torch.ones_like(hi))
            return torch.where(hi > lo, (x - lo) * scale, x).clamp_(0, 1)
        if name == "equalize":
            return TF.equalize((x * 255).round().byte()).float() / 255
        raise AssertionError(name)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n = len(x)
        for _ in range(self.num_ops):
            op = torch.randint(len(OPS), (n,), generator=g)
            m = self.magnitude + self.magnitude_std * torch.randn(n, generator=g) if self.magnitude_std else torch.full((n,), float(self.magnitude))
            level = m.clamp(0, 10) / 10
            sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
            # Images sorted by the op they drew: each op acts on one contiguous slice, with
            # one gather before and one scatter after instead of an index/index_put per op.
            order = op.argsort(stable=True)
            op, level, sign = op[order], level[order], sign[order]
            ends = torch.bincount(op, minlength=len(OPS)).cumsum(0).tolist()
            starts = [0] + ends[:-1]
            d = order.to(x.device)
            y = x[d]
            first, last = OPS.index(GEOMETRIC[0]), OPS.index(GEOMETRIC[-1])  # contiguous in OPS
            a, b = starts[first], ends[last]
            if b > a:
                theta = self.geometric_theta(op[a:b], level[a:b], sign[a:b])
                y[a:b] = warp(y[a:b], theta, "bilinear").clamp_(0, 1)
            for k, name in enumerate(OPS):
                a, b = starts[k], ends[k]
                if name != "identity" and name not in GEOMETRIC and b > a:
                    y[a:b] = self.colour(name, y[a:b], level[a:b], sign[a:b])
            x[d] = y
        return x


def random_erasing(x: torch.Tensor, p: float, g: torch.Generator, scale=(0.02, 1 / 3), ratio=(0.3, 3.3)) -> torch.Tensor:
    """timm's RandomErasing (mode 'pixel', one box): with probability p per image, a box
    of random area and aspect filled with normal noise, on normalized images."""
    n, _, h, w = x.shape
    apply = torch.rand(n, generator=g) < p
    if not apply.any():
        return x
    boxes, ok = _draw_boxes(n, h, w, scale, ratio, g, aspect_on_width=False, strict=True)
    chosen = (apply & ok).nonzero().squeeze(1)
    if not len(chosen):
        return x
    top, left, bh, bw = boxes[chosen].unbind(1)
    ys = torch.arange(h).view(1, h, 1)
    xs = torch.arange(w).view(1, 1, w)
    inside_y = (ys >= top.view(-1, 1, 1)) & (ys < (top + bh).view(-1, 1, 1))
    inside_x = (xs >= left.view(-1, 1, 1)) & (xs < (left + bw).view(-1, 1, 1))
    mask = (inside_y & inside_x).unsqueeze(1).to(x.device)
    noise = torch.randn((len(chosen), *x.shape[1:]), generator=g).to(x.device, x.dtype)
    d = chosen.to(x.device)
    x[d] = torch.where(mask, noise, x[d])
    return x


class BatchAugment:
    """The training-time pipeline of a recipe, for uint8 batches on the device."""

    def __init__(self, *, crop: bool, crop_scale=(0.08, 1.0), hflip: float = 0.5, randaugment_ops: int = 0,
                 randaugment_magnitude: float = 0.0, randaugment_std: float = 0.0, random_erasing: float = 0.0,
                 mixup: float = 0.0, cutmix: float = 0.0, num_classes: int = 10,
                 mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.5,)):
        self.crop, self.crop_scale, self.hflip = crop, tuple(float(v) for v in crop_scale), hflip
        self.randaugment = RandAugment(randaugment_ops, randaugment_magnitude, randaugment_std) if randaugment_ops and randaugment_magnitude > 0 else None
        self.erasing = random_erasing
        self.mean, self.std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
        mixers = [m for m in (v2.MixUp(alpha=mixup, num_classes=num_classes) if mixup > 0 else None,
                              v2.CutMix(alpha=cutmix, num_classes=num_classes) if cutmix > 0 else None) if m]
        self.mix: Optional[v2.Transform] = v2.RandomChoice(mixers) if mixers else None
        self.num_classes = num_classes

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, g: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        """uint8 (N, C, H, W) and int labels -> normalized float images and soft targets."""
        return self.mix_batch(self.per_image(images, g), labels)

    def per_image(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Everything drawn per image, from `g`: crop, flip, RandAugment, normalization, erasing."""
        x = images.float().div_(255)
        n, _, h, w = x.shape
        if self.crop and self.crop_scale != (1.0, 1.0):
            boxes = sample_boxes(n, h, w, self.crop_scale, (3 / 4, 4 / 3), g)
            flip = torch.rand(n, generator=g) < self.hflip
            x = warp(x, crop_flip_theta(boxes, flip, h, w), "bicubic").clamp_(0, 1)
        elif self.crop and self.hflip > 0:  # whole-image "crops": flip only, no resampling
            flip = (torch.rand(n, generator=g) < self.hflip).view(-1, 1, 1, 1).to(x.device)
            x = torch.where(flip, x.flip(-1), x)
        if self.randaugment is not None:
            x = self.randaugment(x, g)
        x = normalize(x, self.mean, self.std)
        if self.erasing > 0:
            x = random_erasing(x, self.erasing, g)
        return x

    def mix_batch(self, x: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """MixUp or CutMix (torchvision's, torch's global RNG) and soft targets."""
        if self.mix is not None:
            return self.mix(x, labels)
        return x, F.one_hot(labels, self.num_classes).to(x.dtype)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean.to(x.device, x.dtype)) / std.to(x.device, x.dtype)


def prepare_eval(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    return normalize(images.float().div_(255), torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1))
