"""The ImageNet-C corruptions that apply to small grey images, in torch, on a batch.

Parameters are those of CIFAR-10-C, which Hendrycks and Dietterich made for 32-px images:
hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py (Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations, ICLR 2019). Each family below names the
function of that file it follows and where it departs from it. ImageMagick's motion blur,
which make_cifar_c.py calls through Wand, is the numpy reimplementation of the
`imagecorruptions` package (bethgelab/imagecorruptions, corruptions.py: _motion_blur).

Why not `imagecorruptions` itself: measured on this stack (numpy 2.4, scikit-image 0.26), 3 of
its 19 corruptions fail (glass_blur and gaussian_blur pass skimage's removed `multichannel`,
fog uses numpy's removed `np.float_`), it carries ImageNet-C's parameters, made for 224 px
(its defocus blur at severity 1 already moves a Fashion-MNIST pixel by 21/255 on average, CIFAR-C's
by a few), and on grey images `saturate` returns the image unchanged.

Images are floats in [0, 1], (N, C, H, W); `corrupt` returns them cut to 256 levels, as
CIFAR-10-C stores them (np.uint8, which truncates). Every random draw comes from the generator given, so a fixed
seed gives the same corrupted test set to every network.
"""

from __future__ import annotations

import io
import math
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

SEVERITIES = (1, 2, 3, 4, 5)

# ----------------------------------------------------------------------------- helpers


def _uniform(shape, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=g) * (high - low) + low


def _pad(x: torch.Tensor, ph: int, pw: int, mode: str) -> torch.Tensor:
    """Pad the two spatial axes; `symmetric` repeats the edge pixel (scipy's 'reflect'),
    torch's `reflect` does not (OpenCV's BORDER_REFLECT_101, scipy's 'mirror')."""
    if mode != "symmetric":
        return F.pad(x, (pw, pw, ph, ph), mode=mode)
    x = torch.cat([x[..., :pw].flip(-1), x, x[..., x.shape[-1] - pw:].flip(-1)], -1) if pw else x
    return torch.cat([x[..., :ph, :].flip(-2), x, x[..., x.shape[-2] - ph:, :].flip(-2)], -2) if ph else x


def _conv(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """Correlate every channel with a 2-d kernel, the border padded by `mode` (reflect:
    OpenCV's default BORDER_REFLECT_101; replicate: scikit-image's 'nearest'; symmetric:
    scikit-image's 'reflect')."""
    kh, kw = kernel.shape
    padded = _pad(x, kh // 2, kw // 2, mode)
    weight = kernel.to(x.dtype).expand(x.shape[1], 1, kh, kw)
    return F.conv2d(padded, weight, groups=x.shape[1])


def gaussian_1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy.ndimage's Gaussian kernel (what skimage.filters.gaussian uses): radius
    int(truncate * sigma + 0.5), normalised; [1] for a radius of 0."""
    radius = int(truncate * sigma + 0.5)
    if radius == 0:
        return torch.ones(1, dtype=torch.float64)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian(x: torch.Tensor, sigma: float, mode: str = "replicate", truncate: float = 4.0) -> torch.Tensor:
    """skimage.filters.gaussian over the two spatial axes (mode 'nearest': replicate)."""
    k = gaussian_1d(sigma, truncate)
    if len(k) == 1:
        return x
    return _conv(_conv(x, k[None, :], mode), k[:, None], mode)


def clipped_zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """make_cifar_c.py's clipped_zoom: the centre ceil(h / factor) square, zoomed by
    `factor` (order-1, corners on corners, as scipy.ndimage.zoom), trimmed back to h."""
    h = x.shape[-1]
    ch = int(math.ceil(h / factor))
    top = (h - ch) // 2
    crop = x[..., top:top + ch, top:top + ch]
    side = int(round(ch * factor))
    zoomed = F.interpolate(crop, size=(side, side), mode="bilinear", align_corners=True)
    trim = (side - h) // 2
    return zoomed[..., trim:trim + h, trim:trim + h]


def _disk(radius: float, alias_blur: float) -> torch.Tensor:
    """make_cifar_c.py's disk: an aliased disk on a 17x17 grid (radius <= 8), normalised,
    then cv2.GaussianBlur with a 3x3 kernel of sigma alias_blur; cropped to its support."""
    grid = np.arange(-8, 9)
    xx, yy = np.meshgrid(grid, grid)
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    g = np.exp(-np.arange(-1, 2) ** 2 / (2 * alias_blur ** 2))
    g /= g.sum()
    kernel = torch.from_numpy(disk)
    kernel = _conv(_conv(kernel[None, None], torch.from_numpy(g)[None, :], "reflect"),
                   torch.from_numpy(g)[:, None], "reflect")[0, 0]
    keep = kernel.abs().sum(0) > 0
    return kernel[keep][:, keep]


def shifted(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Each image moved by its own whole-pixel (dx, dy), the edge repeated into what is
    uncovered (imagecorruptions' shift)."""
    n, _, h, w = x.shape
    ys = (torch.arange(h)[None, :] - dy[:, None]).clamp(0, h - 1)
    xs = (torch.arange(w)[None, :] - dx[:, None]).clamp(0, w - 1)
    out = x[torch.arange(n)[:, None, None], :, ys[:, :, None], xs[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2)


def motion(x: torch.Tensor, radius: int, sigma: float, angle: torch.Tensor) -> torch.Tensor:
    """ImageMagick's motion blur as imagecorruptions reimplements it: a one-sided Gaussian of
    2 * radius + 1 taps along each image's angle (degrees)."""
    width = 2 * radius + 1
    k = torch.exp(-torch.arange(width, dtype=torch.float64) ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).to(x.dtype)
    rad = torch.deg2rad(angle.double())
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    for i in range(width):
        dy = -torch.ceil(i * torch.sin(rad) - 0.5).long()
        dx = -torch.ceil(i * torch.cos(rad) - 0.5).long()
        if bool((dy.abs() >= h).any() or (dx.abs() >= w).any()):
            break
        out = out + k[i] * shifted(x, dx, dy)
    return out


def plasma_fractal(n: int, size: int, decay: float, g: torch.Generator) -> torch.Tensor:
    """make_cifar_c.py's plasma_fractal (diamond-square), one map per image: (n, size, size)
    in [0, 1]; size a power of two."""
    assert size & (size - 1) == 0
    m = torch.zeros(n, size, size, dtype=torch.float64)
    step, wibble = size, 100.0

    def wibbled(a: torch.Tensor) -> torch.Tensor:
        return a / 4 + wibble * _uniform(a.shape, -wibble, wibble, g).double()

    while step >= 2:
        half = step // 2
        corners = m[:, 0::step, 0::step]
        square = corners + corners.roll(-1, 1)
        square = square + square.roll(-1, 2)
        m[:, half::step, half::step] = wibbled(square)
        dr, ul = m[:, half::step, half::step], m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = wibbled(dr + dr.roll(1, 1) + ul + ul.roll(-1, 2))
        m[:, half::step, 0::step] = wibbled(dr + dr.roll(1, 2) + ul + ul.roll(-1, 1))
        step, wibble = half, wibble / decay
    m = m - m.amin((1, 2), keepdim=True)
    return m / m.amax((1, 2), keepdim=True)


def _box_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """PIL's BOX resampling along one axis as a matrix (its precompute_coeffs): each output
    pixel averages the input pixels whose centres its box holds."""
    scale = size_in / size_out
    support = 0.5 * max(scale, 1.0)
    rows = torch.zeros(size_out, size_in, dtype=torch.float64)
    for o in range(size_out):
        centre = (o + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), size_in)
        for i in range(lo, hi):
            u = (i - centre + 0.5) / max(scale, 1.0)
            rows[o, i] = 1.0 if -0.5 <= u < 0.5 else 0.0
        rows[o] /= rows[o].sum()
    return rows


def _box_resize(x: torch.Tensor, side: int) -> torch.Tensor:
    rh = _box_matrix(x.shape[-2], side).to(x.dtype)
    rw = _box_matrix(x.shape[-1], side).to(x.dtype)
    return rh @ x @ rw.T


def _quantised(x: torch.Tensor) -> torch.Tensor:
    """To 8 bits as make_cifar_c.py stores its images: np.uint8, which truncates (the 1e-6
    keeps a level that float arithmetic lands a hair below it)."""
    return (x.clamp(0, 1) * 255 + 1e-6).floor() / 255


# ----------------------------------------------------------------------------- the families
# Each takes images in [0, 1] (N, C, H, W), a severity 1-5 and a generator; the list of
# parameters per severity is make_cifar_c.py's.


def gaussian_noise(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    c = [0.04, 0.06, .08, .09, .10][s - 1]
    return x + torch.randn(x.shape, generator=g) * c


def shot_noise(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    c = [500, 250, 100, 75, 50][s - 1]
    return torch.poisson(x * c, generator=g) / c


def impulse_noise(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    """skimage.util.random_noise(mode='s&p', amount=c): a share c of the pixels set to 0 or 1, half each."""
    c = [.01, .02, .03, .05, .07][s - 1]
    hit, salt = torch.rand(x.shape, generator=g) < c, torch.rand(x.shape, generator=g) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


def defocus_blur(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    radius, alias = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][s - 1]
    return _conv(x, _disk(radius, alias), "reflect")


def glass_blur(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    """Blur, shuffle every pixel with a neighbour (in make_cifar_c.py's order, np.random.randint's
    [-d, d) offsets), blur again; the first blur is stored as uint8 (truncated), as there."""
    sigma, d, iterations = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][s - 1]
    y = (gaussian(x, sigma) * 255).floor() / 255
    n, _, h, w = y.shape
    y = y.permute(0, 2, 3, 1).contiguous()  # (N, H, W, C): one pixel per index
    images = torch.arange(n)
    positions = [(i, j) for i in range(h - d, d, -1) for j in range(w - d, d, -1)]
    for _ in range(iterations):
        offsets = torch.randint(-d, d, (len(positions), 2, n), generator=g)
        for (i, j), (dx, dy) in zip(positions, offsets.unbind(0)):
            here, there = y[images, i, j].clone(), y[images, i + dy, j + dx].clone()
            y[images, i, j], y[images, i + dy, j + dx] = there, here
    return gaussian(y.permute(0, 3, 1, 2), sigma)


def motion_blur(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    radius, sigma = [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)][s - 1]
    return motion(x, radius, sigma, _uniform((len(x),), -45, 45, g))


def zoom_blur(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    top = [1.06, 1.11, 1.16, 1.21, 1.26][s - 1]
    factors = np.arange(1, top, 0.01)  # make_cifar_c.py's np.arange, its last factor included
    out = sum(clipped_zoom(x, float(z)) for z in factors)
    return (x + out) / (len(factors) + 1)


def snow(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    """A thresholded, zoomed noise layer streaked by motion blur, added with its 180-degree
    turn; the image itself brightened toward 1.5 x its grey level + 0.5 (grey: itself)."""
    loc, scale, zoom, cut, radius, sigma, mix = [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)][s - 1]
    n, _, h, w = x.shape
    layer = clipped_zoom(torch.randn((n, 1, h, w), generator=g) * scale + loc, zoom)
    layer = torch.where(layer < cut, torch.zeros_like(layer), layer)
    layer = (layer.clamp(0, 1) * 255).floor() / 255  # make_cifar_c.py writes it as an 8-bit PNG
    layer = motion(layer, radius, sigma, _uniform((n,), -135, -45, g))
    grey = x.mean(1, keepdim=True)
    x = mix * x + (1 - mix) * torch.maximum(x, grey * 1.5 + 0.5)
    return x + layer + layer.flip(-1, -2)


def fog(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    strength, decay = [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][s - 1]
    n, _, h, w = x.shape
    size = 2
    while size < max(h, w):  # make_cifar_c.py's map is 32 x 32: a power of two, at least the image
        size *= 2
    plasma = plasma_fractal(n, size, decay, g)[:, None, :h, :w].to(x.dtype)
    top = x.amax((1, 2, 3), keepdim=True)
    return (x + strength * plasma) * top / (top + strength)


def brightness(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    """make_cifar_c.py adds c to HSV's V; a grey pixel's V is its value (S is 0): exact."""
    return x + [.05, .1, .15, .2, .3][s - 1]


def contrast(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    c = [.75, .5, .4, .3, 0.15][s - 1]
    mean = x.mean((2, 3), keepdim=True)
    return (x - mean) * c + mean


def _affine_theta(n: int, h: int, w: int, jitter: float, g: torch.Generator) -> torch.Tensor:
    """make_cifar_c.py's random affine: three points around the centre moved by up to
    `jitter` pixels (cv2.getAffineTransform); cv2.warpAffine samples the source at the
    inverse map. As grid_sample thetas, in align_corners=True coordinates."""
    centre, size = torch.tensor([w // 2, h // 2], dtype=torch.float64), min(h, w) // 3
    pts1 = torch.stack([centre + size, torch.stack([centre[0] + size, centre[1] - size]), centre - size])
    pts2 = pts1 + _uniform((n, 3, 2), -jitter, jitter, g).double()
    ones = torch.ones(n, 3, 1, dtype=torch.float64)
    forward = torch.linalg.solve(torch.cat([pts1.expand(n, 3, 2), ones], 2), pts2).transpose(1, 2)  # (n, 2, 3)
    full = torch.cat([forward, torch.tensor([[[0.0, 0.0, 1.0]]], dtype=torch.float64).expand(n, 1, 3)], 1)
    inverse = torch.linalg.inv(full)  # destination pixel -> source pixel
    to_norm = torch.tensor([[2 / (w - 1), 0, -1], [0, 2 / (h - 1), -1], [0, 0, 1]], dtype=torch.float64)
    return (to_norm @ inverse @ torch.linalg.inv(to_norm))[:, :2]


def elastic_transform(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    """A random affine warp (bilinear, BORDER_REFLECT_101), then a displacement field of
    Gaussian-smoothed uniform noise (map_coordinates, order 1, mode 'reflect')."""
    n, c, h, w = x.shape
    alpha, sigma, jitter = [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                            (0.1, 0.03, 0.03)][s - 1]
    alpha, sigma, jitter = alpha * h, sigma * h, jitter * h  # make_cifar_c.py's IMSIZE multiples
    theta = _affine_theta(n, h, w, jitter, g).to(x.dtype)
    warped = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=True), mode="bilinear",
                           padding_mode="reflection", align_corners=True)
    dx, dy = (gaussian(_uniform((n, 1, h, w), -1, 1, g), sigma, "symmetric", truncate=3) * alpha for _ in range(2))
    ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
    grid = torch.stack([(2 * (xs + dx[:, 0]) + 1) / w - 1, (2 * (ys + dy[:, 0]) + 1) / h - 1], -1)
    return F.grid_sample(warped, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def pixelate(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    """PIL's BOX resize down to int(side * c) and back up, each rounded to 8 bits as PIL's are."""
    c = [0.95, 0.9, 0.85, 0.75, 0.65][s - 1]
    small = (_box_resize(x, int(x.shape[-1] * c)) * 255).round() / 255
    return (_box_resize(small, x.shape[-1]) * 255).round() / 255


def jpeg_compression(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    """JPEG at quality c through PIL, as make_cifar_c.py saves it (grey images as grey JPEGs)."""
    from PIL import Image

    quality = [80, 65, 58, 50, 40][s - 1]
    out = []
    for image in (x.clamp(0, 1) * 255 + 1e-6).floor().to(torch.uint8).numpy():
        buffer = io.BytesIO()
        Image.fromarray(image[0] if len(image) == 1 else image.transpose(1, 2, 0)).save(buffer, "JPEG", quality=quality)
        decoded = np.asarray(Image.open(buffer))
        out.append(decoded[None] if decoded.ndim == 2 else decoded.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out)).to(x.dtype) / 255


Corruption = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]

# ImageNet-C's 15 families in its order, with their kind; mCE averages over those that run.
FAMILIES: Dict[str, Tuple[str, Corruption]] = {
    "gaussian_noise": ("noise", gaussian_noise), "shot_noise": ("noise", shot_noise),
    "impulse_noise": ("noise", impulse_noise), "defocus_blur": ("blur", defocus_blur),
    "glass_blur": ("blur", glass_blur), "motion_blur": ("blur", motion_blur), "zoom_blur": ("blur", zoom_blur),
    "snow": ("weather", snow), "fog": ("weather", fog), "brightness": ("weather", brightness),
    "contrast": ("digital", contrast), "elastic_transform": ("digital", elastic_transform),
    "pixelate": ("digital", pixelate), "jpeg_compression": ("digital", jpeg_compression),
}
# Families left out, each with why: none is replaced by a stand-in.
SKIPPED: Dict[str, str] = {
    "frost": "overlays Hendrycks' six frost photographs (frost1.png ... frost6.jpg), which this repository does not "
             "ship; no made-up frost replaces them",
    "saturate": "changes HSV saturation, which a grey image does not have (ImageNet-C's extra set; imagecorruptions "
                "returns grey images unchanged)",
}


# Families whose make_cifar_c.py severities do not grow in pixel change. Elastic's trade a
# random affine warp (its 3 points jittered by 8% of the side at severity 1, 3% at 5) for a
# growing elastic field: on Fashion-MNIST a pixel moves by 25/255 on average at severity 1 and
# 15/255 at 5, in the reference implementation (cv2, scikit-image) as here. Kept as published.
NOT_MONOTONE = {"elastic_transform": "severity 1 moves pixels more than severity 5 (make_cifar_c.py's parameters)"}


def names() -> List[str]:
    return list(FAMILIES)


def corrupt(x: torch.Tensor, name: str, severity: int, g: torch.Generator) -> torch.Tensor:
    """Images in [0, 1] corrupted by family `name` at `severity` (1-5), cut to 8 bits."""
    if name in SKIPPED:
        raise ValueError(f"{name} is skipped: {SKIPPED[name]}")
    if name not in FAMILIES:
        raise ValueError(f"unknown corruption {name!r}: choose one of {', '.join(FAMILIES)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity} is not one of {SEVERITIES}")
    return _quantised(FAMILIES[name][1](x.double(), severity, g)).to(x.dtype)


def corrupted_sets(images: torch.Tensor, seed: int = 0) -> Dict[Tuple[str, int], torch.Tensor]:
    """Every family at every severity of uint8 images (N, C, H, W): (name, severity) -> uint8
    images. Each set draws from its own generator, seeded by `seed` and its place, so one
    set does not depend on which others were made."""
    x = images.double() / 255
    out = {}
    for i, name in enumerate(FAMILIES):
        for s in SEVERITIES:
            g = torch.Generator().manual_seed(seed * 1000 + 10 * i + s)
            out[(name, s)] = (corrupt(x, name, s, g) * 255).round().to(torch.uint8)
    return out
