"""The recipe's augmentation, applied to a whole batch on the training device, with
every random draw made per image, as the paper's per-image pipeline does.

A torchvision v2 transform given a batch tensor draws its parameters once for the
whole batch; applied image by image it costs more than a training step of the small
models. So here each stage draws a vector of parameters, one per image, and applies
them in one tensor operation, on uint8 values held in a float tensor:

- random resized crop (torchvision's sampling: scale, log-uniform ratio, 10 tries,
  then the whole image) and horizontal flip: one `grid_sample` with one affine matrix
  per image, in the recipe's interpolation, rounded back to uint8 values (as PIL's
  resize gives them to timm's RandAugment);
- RandAugment: timm's policy (`roadmap.randaugment`, e.g. rand-m9-mstd0.5-inc1);
- normalization, then random erasing (timm's per-pixel noise, one box per image).
MixUp and CutMix are torchvision's v2 transforms, one mixing weight per batch, as in
the paper (timm's batch mode).

Every draw is made on the host, from one CPU generator, before any image is touched
(`BatchAugment.draw`): a GPU never waits on a draw, and the CPU path draws exactly what
it always drew. What the device needs from the draws (crop matrices, the op order,
RandAugment's arguments, the erased boxes) travels in one pinned, non-blocking copy
(`send`); on a GPU the erasing noise is drawn there, from a generator seeded by one draw.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from roadmap.errors import ConfigError
from roadmap.randaugment import Policy, RandAugment, Slot, fill_colour
from roadmap.recipe import RecipeConfig


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
    from the pixel-centre coordinates by broadcasting (faster than affine_grid for
    small images)."""
    n, _, h, w = x.shape
    t = theta.to(x.device, x.dtype)
    xs = (torch.arange(w, device=x.device, dtype=x.dtype) * 2 + 1) / w - 1  # pixel centres in [-1, 1]
    ys = (torch.arange(h, device=x.device, dtype=x.dtype) * 2 + 1) / h - 1
    # x' = t00 x + t01 y + t02 and y' = t10 x + t11 y + t12, as (n, h, w)
    gx = t[:, 0, 0, None, None] * xs + (t[:, 0, 1, None] * ys + t[:, 0, 2, None])[:, :, None]
    gy = t[:, 1, 0, None, None] * xs + (t[:, 1, 1, None] * ys + t[:, 1, 2, None])[:, :, None]
    return F.grid_sample(x, torch.stack([gx, gy], -1), mode=mode, padding_mode="zeros", align_corners=False)


@dataclass
class Erase:
    """The erasing drawn for a batch: which images, their boxes, and their noise."""

    rows: torch.Tensor
    """The images erased (indices into the batch)."""
    boxes: torch.Tensor
    """Their boxes (rows, 4): top, left, h, w."""
    noise: Optional[torch.Tensor] = None
    """Normal noise (rows, C, H, W) drawn on the host (CPU runs); None: drawn on the device from `seed`."""
    seed: int = 0
    """Seeds the device's noise generator (drawn from the host generator where noise is None)."""


def draw_erasing(n: int, shape: Sequence[int], p: float, g: torch.Generator, on_host: bool = True,
                 scale=(0.02, 1 / 3), ratio=(0.3, 3.3)) -> Optional[Erase]:
    """timm's RandomErasing draws (mode 'pixel', one box): with probability p per image, a box
    of random area and aspect; the noise that fills it on the host, or a seed for the device's.
    `shape` is an image's (C, H, W); None where no image is erased."""
    c, h, w = shape
    apply = torch.rand(n, generator=g) < p
    if not apply.any():
        return None
    boxes, ok = _draw_boxes(n, h, w, scale, ratio, g, aspect_on_width=False, strict=True)
    chosen = (apply & ok).nonzero().squeeze(1)
    if not len(chosen):
        return None
    if on_host:
        return Erase(chosen, boxes[chosen], torch.randn((len(chosen), c, h, w), generator=g))
    return Erase(chosen, boxes[chosen], seed=int(torch.randint(2**62, (), generator=g)))


def apply_erasing(x: torch.Tensor, erase: Optional[Erase]) -> torch.Tensor:
    """The drawn boxes of x filled with their noise, in place."""
    if erase is None:
        return x
    _, _, h, w = x.shape
    top, left, bh, bw = erase.boxes.to(x.device).unbind(1)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside_y = (ys >= top.view(-1, 1, 1)) & (ys < (top + bh).view(-1, 1, 1))
    inside_x = (xs >= left.view(-1, 1, 1)) & (xs < (left + bw).view(-1, 1, 1))
    mask = (inside_y & inside_x).unsqueeze(1)
    d = erase.rows.to(x.device)
    shape = (len(d), *x.shape[1:])
    if erase.noise is not None:
        noise = erase.noise.to(x.device, x.dtype)
    else:
        noise = torch.randn(shape, generator=_generator(x.device, erase.seed), device=x.device, dtype=x.dtype)
    x[d] = torch.where(mask, noise, x[d])
    return x


def _generator(device: torch.device, seed: int) -> Optional[torch.Generator]:
    """A generator of the device's own, seeded; None on the meta device (shapes only, no values)."""
    if device.type == "meta":
        return None
    return torch.Generator(device=device).manual_seed(seed)


def random_erasing(
    x: torch.Tensor, p: float, g: torch.Generator, scale=(0.02, 1 / 3), ratio=(0.3, 3.3)
) -> torch.Tensor:
    """timm's RandomErasing (mode 'pixel', one box): with probability p per image, a box
    of random area and aspect filled with normal noise, on normalized images."""
    erase = draw_erasing(len(x), x.shape[1:], p, g, x.device.type == "cpu", scale, ratio)
    return apply_erasing(x, send(erase, x.device))


@dataclass
class Draws:
    """Every random draw of one batch (BatchAugment.draw), and what the device needs of them."""

    theta: Optional[torch.Tensor] = None
    """Crop and flip: one affine matrix per image (N, 2, 3), for `warp`."""
    flip: Optional[torch.Tensor] = None
    """Flip only (whole-image crops): which images are mirrored (N, 1, 1, 1)."""
    randaugment: List[Slot] = field(default_factory=list)
    """RandAugment's slots (randaugment.RandAugment.plan)."""
    erase: Optional[Erase] = None
    """Random erasing's draws."""


# ----------------------------------------------------------------------------- one copy to the device


def send(draws: Any, device: torch.device, pack: Optional[bool] = None) -> Any:
    """`draws` (a dataclass, list or tensor, nested) with its tensors on `device`, all in one
    copy: packed into one host buffer (pinned for CUDA), sent non-blocking, unpacked as views
    of the device's copy. `pack` None: the same object, untouched, where the device is the CPU."""
    if not (pack if pack is not None else device.type != "cpu"):
        return draws
    tensors: List[torch.Tensor] = []
    _visit(draws, tensors.append)
    if not tensors:
        return draws
    on_device = iter(_one_copy(tensors, device))
    return _visit(draws, lambda t: next(on_device))


def _one_copy(tensors: List[torch.Tensor], device: torch.device, align: int = 16) -> List[torch.Tensor]:
    sizes = [t.numel() * t.element_size() for t in tensors]
    starts = [0]
    for size in sizes:
        starts.append(starts[-1] + -(-size // align) * align)
    host = torch.empty(starts[-1], dtype=torch.uint8, pin_memory=device.type == "cuda")
    for t, start, size in zip(tensors, starts, sizes):
        host[start : start + size] = t.detach().contiguous().reshape(-1).view(torch.uint8)
    sent = host.to(device, non_blocking=True)
    return [sent[start : start + size].view(t.dtype).view(t.shape) for t, start, size in zip(tensors, starts, sizes)]


def _visit(obj: Any, fn) -> Any:
    """obj with fn applied to each of its tensors, in a fixed order (dataclasses, lists, tuples)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_visit(v, fn) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _visit(getattr(obj, f.name), fn) for f in dataclasses.fields(obj)})
    return obj


class BatchAugment:
    """The training-time pipeline of a recipe, for uint8 batches on the device.

    Args:
        crop: crop and flip here (in-memory data); image folders crop and flip in their workers.
        crop_scale: random resized crop's area range; (1, 1) keeps the whole image.
        hflip: probability of a horizontal flip.
        interpolation: `bicubic` or `bilinear`, for the crop and RandAugment's geometric ops.
        randaugment: timm's policy string (rand-m9-mstd0.5-inc1), or None.
        randaugment_scale: its magnitude's scale (the recipe's regularization); 0 turns it off.
        random_erasing: probability of erasing a box per image.
        mixup, cutmix: Beta alphas; 0 turns each off.
        num_classes, mean, std: the data's.
    """

    def __init__(self, *, crop: bool, crop_scale=(0.08, 1.0), hflip: float = 0.5, interpolation: str = "bicubic",
                 randaugment: Optional[str] = None, randaugment_scale: float = 1.0, random_erasing: float = 0.0,
                 mixup: float = 0.0, cutmix: float = 0.0, num_classes: int = 10,
                 mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.5,)):
        self.crop, self.crop_scale, self.hflip = crop, tuple(float(v) for v in crop_scale), hflip
        self.interpolation = interpolation
        policy = Policy.parse(randaugment).scaled(randaugment_scale) if randaugment else None
        self.randaugment = None
        if policy is not None and policy.magnitude > 0:
            if len(mean) not in (1, 3):
                raise ConfigError(
                    f"RandAugment works on grey or RGB images, not {len(mean)} channels: set recipe.randaugment=null"
                )
            self.randaugment = RandAugment(policy, fill_colour(mean), interpolation)
        self.erasing = random_erasing
        self.mean, self.std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
        mixers = [m for m in (v2.MixUp(alpha=mixup, num_classes=num_classes) if mixup > 0 else None,
                              v2.CutMix(alpha=cutmix, num_classes=num_classes) if cutmix > 0 else None) if m]
        self.mix: Optional[v2.Transform] = v2.RandomChoice(mixers) if mixers else None
        self.num_classes = num_classes

    @classmethod
    def for_recipe(cls, recipe: RecipeConfig, num_classes: int, mean: Sequence[float], std: Sequence[float],
                   crop: bool) -> "BatchAugment":
        """The recipe's pipeline at its regularization strength; `crop` where the data is in memory."""
        r = recipe
        return cls(
            crop=crop,
            crop_scale=r.crop_scale,
            hflip=r.hflip if crop else 0.0,
            interpolation=r.interpolation.value,
            randaugment=r.randaugment,
            randaugment_scale=r.regularization,
            random_erasing=r.scaled(r.random_erasing),
            mixup=r.scaled(r.mixup),
            cutmix=r.scaled(r.cutmix),
            num_classes=num_classes,
            mean=mean,
            std=std,
        )

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, g: torch.Generator
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """uint8 (N, C, H, W) and int labels -> normalized float images and soft targets."""
        return self.mix_batch(self.per_image(images, g), labels)

    def per_image(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Everything drawn per image, from `g`: crop, flip, RandAugment, normalization, erasing."""
        x = images.float()
        return self.apply(x, send(self.draw(x.shape, g, x.device), x.device))

    def draw(self, shape: Sequence[int], g: torch.Generator, device: torch.device) -> Draws:
        """Every draw for a batch of `shape` (N, C, H, W), on the host, in the pipeline's order."""
        n, c, h, w = shape
        out = Draws()
        if self.crop and self.crop_scale != (1.0, 1.0):
            boxes = sample_boxes(n, h, w, self.crop_scale, (3 / 4, 4 / 3), g)
            flip = torch.rand(n, generator=g) < self.hflip
            out.theta = crop_flip_theta(boxes, flip, h, w)
        elif self.crop and self.hflip > 0:  # whole-image "crops": flip only, no resampling
            out.flip = (torch.rand(n, generator=g) < self.hflip).view(-1, 1, 1, 1)
        if self.randaugment is not None:
            out.randaugment = self.randaugment.plan(n, g, h, w)
        if self.erasing > 0:
            out.erase = draw_erasing(n, (c, h, w), self.erasing, g, on_host=device.type == "cpu")
        return out

    def apply(self, x: torch.Tensor, d: Draws) -> torch.Tensor:
        """The drawn augmentation on float images x (uint8 values): normalized images."""
        if d.theta is not None:
            x = warp(x, d.theta, self.interpolation).round_().clamp_(0, 255)
        elif d.flip is not None:
            x = torch.where(d.flip.to(x.device), x.flip(-1), x)
        if self.randaugment is not None:
            x = self.randaugment.apply_plan(x, d.randaugment)
        x = normalize(x.div_(255), self.mean, self.std)
        return apply_erasing(x, d.erase)

    def mix_batch(self, x: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """MixUp or CutMix (torchvision's, torch's global RNG) and soft targets."""
        if self.mix is not None:
            return self.mix(x, labels)
        return x, F.one_hot(labels, self.num_classes).to(x.dtype)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std per channel; the statistics are copied to x's device once, then kept."""
    m, s = _stats_on(x.device, x.dtype, tuple(mean.flatten().tolist()), tuple(std.flatten().tolist()))
    return (x - m) / s


@functools.lru_cache(maxsize=16)
def _stats_on(device: torch.device, dtype: torch.dtype, mean: Tuple[float, ...], std: Tuple[float, ...]):
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return m.to(device, dtype), s.to(device, dtype)


def prepare_eval(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    return normalize(
        images.float().div_(255), torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    )
