"""Datasets: Fashion-MNIST, CIFAR-10/100 and image-folder trees, all real.

Small datasets (Fashion-MNIST, CIFAR) are read once into one uint8 tensor in memory
and augmented a batch at a time on the training device (`roadmap.augment`).
Image folders (ImageNet, Imagenette, ...) are decoded, cropped and flipped one image
at a time in DataLoader workers; the rest of the recipe's augmentation then runs on
the batch, on the device, as for the small datasets.
"""

from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F

from roadmap.augment import BatchAugment
from roadmap.errors import (
    FINITE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    Choice,
    ConfigError,
    DataError,
    check_ranges,
)
from roadmap.machine import Machine
from roadmap.recipe import RecipeConfig

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class Source(Choice):
    """Where images come from. In-memory sources have a loader in IN_MEMORY_LOADERS."""

    fashion_mnist = "fashion_mnist"
    cifar10 = "cifar10"
    cifar100 = "cifar100"
    imagefolder = "imagefolder"  # train/ and val/ trees of class folders, decoded in workers


# Where each numeric field may lie (finite in any case).
DATA_RANGES = {
    "image_size": POSITIVE_INT,
    "resize": NON_NEGATIVE_INT,
    "channels": POSITIVE_INT,
    "num_classes": POSITIVE_INT,
    "train_limit": NON_NEGATIVE_INT,
    "test_limit": NON_NEGATIVE_INT,
    "workers": NON_NEGATIVE_INT,
    "mean": FINITE,
    "std": POSITIVE,
}


@dataclass
class DataConfig:
    """What the model sees and where it comes from."""

    name: str
    """The dataset's name, for run and study directories (fashion_mnist, imagenet, imagenette, ...)."""
    source: Source
    """Where the images come from: fashion_mnist, cifar10, cifar100 or imagefolder."""
    image_size: int
    """Side of the square images the network sees, in pixels (Fashion-MNIST is padded 28 -> 32)."""
    channels: int
    """1 (grey) or 3 (RGB); the model's in_chans follows it."""
    num_classes: int
    """Classes; the model's num_classes follows it."""
    resize: int = 0
    """In-memory images are first resized to this side (bicubic), then padded to image_size;
    0 keeps their own size. The ladder's 64-px rung: resize=56, image_size=64 (the default's
    framing, 28 in 32, at twice the resolution)."""
    root: Optional[str] = None
    """Where the local copy lives, and only there (downloads go there too): Fashion-MNIST's IDX
    files in it or in <root>/FashionMNIST/raw, <root>/cifar-10-batches-py, or, for
    imagefolder, the folder holding train/ and val/. Unset: Debian's dataset-fashion-mnist,
    else data/."""
    download: bool = True
    """Try torchvision's downloader when no local copy exists."""
    mean: List[float] = field(default_factory=lambda: [0.5])
    """Per-channel mean of the training images in [0, 1], for normalization (and RandAugment's fill)."""
    std: List[float] = field(default_factory=lambda: [0.5])
    """Per-channel standard deviation, > 0."""
    train_limit: int = 0
    """Use only this many training images (a fixed random subset); 0 = all."""
    test_limit: int = 0
    """Use only this many test images; 0 = all."""
    workers: int = 4
    """DataLoader workers that decode image folders."""

    def __post_init__(self) -> None:
        self.source = Source(self.source)
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(
                f"data.mean/data.std have {len(self.mean)}/{len(self.std)} entries but data.channels={self.channels}: "
                "give one per channel"
            )
        check_ranges(self, "data", DATA_RANGES)
        if self.resize > self.image_size:
            raise ConfigError(
                f"data.resize={self.resize} is larger than data.image_size={self.image_size}: the images would be "
                f"cropped; use data.resize<={self.image_size}, or raise data.image_size"
            )


# ----------------------------------------------------------------------------- in memory


@dataclass
class TensorData:
    """A whole split in memory: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    """uint8, (N, C, H, W)."""
    labels: torch.Tensor
    """int64 class indices, (N,)."""

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, limit: int, seed: int = 0) -> "TensorData":
        if not limit or limit >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        return TensorData(self.images[idx], self.labels[idx])


def _read_idx(path: Path) -> torch.Tensor:
    """An IDX file (MNIST's format), gzipped or not."""
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return torch.frombuffer(bytearray(raw[4 + 4 * ndim :]), dtype=torch.uint8).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Optional[Path]:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def resized(images: torch.Tensor, side: int) -> torch.Tensor:
    """uint8 images resized to side x side, bicubic (antialiased when shrinking), rounded and
    clamped back to uint8; unchanged when side is 0 or their own size."""
    if not side or tuple(images.shape[-2:]) == (side, side):
        return images
    out = F.interpolate(images.float(), size=(side, side), mode="bicubic", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def _pad_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """Centre small images on a black canvas (Fashion-MNIST's 28x28 -> 32x32); size 0: as they are."""
    h, w = images.shape[-2:]
    if not size or (h, w) == (size, size):
        return images
    if h > size or w > size:
        return F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True).round().byte()
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(images, (left, size - w - left, top, size - h - top))


FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def load_fashion_mnist(
    root: Optional[str], image_size: int = 32, download: bool = True
) -> Tuple[TensorData, TensorData]:
    """Fashion-MNIST from `root` (the IDX files in it, in <root>/FashionMNIST/raw or in
    <root>/fashion-mnist) and only there; without a root, from Debian's
    dataset-fashion-mnist, else data/. A download goes to the root (data/ without one)."""
    folders = _fashion_mnist_folders(root)
    files = next((f for f in ([_find_idx(d, n) for n in FASHION_MNIST_FILES] for d in folders) if all(f)), None)
    problem = "no local copy"
    if files is None and download:
        target = root or "data"
        try:
            from torchvision.datasets import FashionMNIST

            for train in (True, False):
                FashionMNIST(target, train=train, download=True)
            files = [_find_idx(Path(target) / "FashionMNIST" / "raw", n) for n in FASHION_MNIST_FILES]
        except Exception as e:  # no network, a proxy, a full disk: all end the same way
            problem = f"the download failed ({type(e).__name__})"
    if files is None or not all(files):
        where = (
            f"data.root={root} (nor in its FashionMNIST/raw/ or fashion-mnist/)"
            if root
            else f"{folders[0]} or {folders[1]}"
        )
        fix = (
            "put the four IDX files there, or drop data.root to use Debian's dataset-fashion-mnist (make data)"
            if root
            else f"run `make data` (installs Debian's dataset-fashion-mnist) or put the four IDX files in {folders[1]}"
        )
        raise DataError(f"Fashion-MNIST not found in {where} and {problem}: {fix}")
    try:
        xtr, ytr, xte, yte = (_read_idx(f) for f in files)
    except Exception as e:
        raise DataError(
            f"Fashion-MNIST files in {files[0].parent} are unreadable ({e}): reinstall them (`make data`)"
        ) from e
    pad = lambda x: _pad_to(x.unsqueeze(1), image_size)  # noqa: E731
    return TensorData(pad(xtr), ytr.long()), TensorData(pad(xte), yte.long())


def _fashion_mnist_folders(root: Optional[str]) -> List[Path]:
    if not root:
        return [DEBIAN_FASHION_MNIST, Path("data") / "FashionMNIST" / "raw", Path("data") / "fashion-mnist"]
    if Path(root).exists() and not Path(root).is_dir():
        raise DataError(f"data.root={root} is not a directory: point it at the folder holding Fashion-MNIST's four IDX "
                        "files, or drop it to use Debian's dataset-fashion-mnist")
    return [Path(root), Path(root) / "FashionMNIST" / "raw", Path(root) / "fashion-mnist"]


def load_cifar(
    classes: int, root: Optional[str], image_size: int = 32, download: bool = True
) -> Tuple[TensorData, TensorData]:
    """CIFAR-10 or CIFAR-100 (`classes`) through torchvision, from <root>/ (data/ without one)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    root = root or "data"
    cls = CIFAR10 if classes == 10 else CIFAR100
    try:
        splits = [cls(root, train=t, download=download) for t in (True, False)]
    except Exception as e:
        raise DataError(
            f"{cls.__name__} not found under {root} and {'the download failed' if download else 'data.download=false'} "
            f"({type(e).__name__}): put torchvision's {cls.base_folder} folder in data.root={root}"
        ) from e
    out = []
    for ds in splits:
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        out.append(TensorData(_pad_to(images, image_size), torch.tensor(ds.targets, dtype=torch.long)))
    return out[0], out[1]


# The in-memory sources: adding a dataset is one entry, a loader(root, image_size, download).
IN_MEMORY_LOADERS: Dict[Source, Callable[[Optional[str], int, bool], Tuple[TensorData, TensorData]]] = {
    Source.fashion_mnist: load_fashion_mnist,
    Source.cifar10: partial(load_cifar, 10),
    Source.cifar100: partial(load_cifar, 100),
}


@functools.lru_cache(maxsize=2)
def _load_cached(
    source: Source, root: Optional[str], image_size: int, download: bool, resize: int = 0
) -> Tuple[TensorData, TensorData]:
    """Read a dataset once per process (a sweep trains many steps on it); nothing mutates it.
    With `resize`, the images at their own size are resized, then padded to image_size."""
    if not resize:
        return IN_MEMORY_LOADERS[source](root, image_size, download)
    native = _load_cached(source, root, 0, download)  # size 0: their own size, unpadded
    return tuple(TensorData(_pad_to(resized(d.images, resize), image_size), d.labels) for d in native)


def load_in_memory(cfg: DataConfig, seed: int = 0) -> Tuple[TensorData, TensorData]:
    train, test = _load_cached(cfg.source, cfg.root, cfg.image_size, cfg.download, cfg.resize)
    if train.images.shape[1] != cfg.channels:
        raise DataError(f"{cfg.source.value} has {train.images.shape[1]} channels but data.channels={cfg.channels}")
    return train.subset(cfg.train_limit, seed), test.subset(cfg.test_limit, seed)


def batches(
    data: TensorData, batch_size: int, generator: Optional[torch.Generator], rank: int = 0, world: int = 1,
    drop_last: bool = True, start: int = 0,
) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Batches of one epoch: shuffled by `generator` (None: in order), each process of a
    distributed run taking its own slice of every global batch. `start` skips batches
    already trained (resuming mid-epoch)."""
    n = len(data)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    step = batch_size * world
    stop = n - n % step if drop_last else n
    for i, b in enumerate(range(0, stop, step)):
        if i < start:
            continue
        idx = order[b : b + step][rank::world]
        yield data.images[idx], data.labels[idx]


# ----------------------------------------------------------------------------- image folders


def folder_datasets(cfg: DataConfig, crop_scale: Tuple[float, float], hflip: float = 0.5,
                    interpolation: str = "bicubic"):
    """train/ and val/ class folders: decoded, random-resized-cropped and flipped (with
    probability `hflip`) per image in workers (train); resized to size/0.875 and
    centre-cropped (val); both resampled with `interpolation`. uint8 out."""
    from torchvision import datasets
    from torchvision.transforms import v2

    if not cfg.root:
        raise DataError(
            "data.root is not set: point it at a folder holding train/ and val/, each with one sub-folder per class"
        )
    root = Path(cfg.root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(
                f"image folder {root / split} not found: point data.root at a folder holding train/ and val/, "
                "each with one sub-folder of images per class"
            )
    size, mode = cfg.image_size, v2.InterpolationMode(interpolation)
    train_tf = v2.Compose([
        v2.PILToTensor(),
        v2.RandomResizedCrop(size, scale=tuple(crop_scale), interpolation=mode, antialias=True),
        v2.RandomHorizontalFlip(hflip),
    ])
    val_tf = v2.Compose([
        v2.PILToTensor(),
        v2.Resize(int(round(size / 0.875)), interpolation=mode, antialias=True),
        v2.CenterCrop(size),
    ])
    loader = ImageLoader("L" if cfg.channels == 1 else "RGB")
    train = datasets.ImageFolder(str(root / "train"), transform=train_tf, loader=loader)
    val = datasets.ImageFolder(str(root / "val"), transform=val_tf, loader=loader)
    if len(train.classes) != cfg.num_classes:
        raise DataError(
            f"{root / 'train'} has {len(train.classes)} classes but data.num_classes={cfg.num_classes}: "
            f"set data.num_classes={len(train.classes)}"
        )
    if cfg.train_limit:
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: cfg.train_limit]
        train = torch.utils.data.Subset(train, pick.tolist())
    if cfg.test_limit:
        val = torch.utils.data.Subset(val, list(range(min(cfg.test_limit, len(val)))))
    return train, val


@dataclass(frozen=True)
class ImageLoader:
    """Reads one image file in `mode` (L or RGB). A class, not a closure, so that datasets
    pickle: DataLoader workers started by spawn or forkserver (Python 3.14's default) get
    the dataset pickled."""

    mode: str
    """PIL's mode the image is converted to."""

    def __call__(self, path: str):
        from torchvision.datasets.folder import default_loader

        return default_loader(path).convert(self.mode)


# ----------------------------------------------------------------------------- batches of a run


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Every epoch's random streams derive from (seed, epoch, rank): a run resumed at an
    epoch boundary draws exactly what the uninterrupted run drew."""
    return (seed * 1_000_003 + epoch * 1_009 + rank) % (2**63)


class Data:
    """A run's data: training batches (uint8, then augmented per image on the device by
    the recipe's BatchAugment) and this process's share of the test set."""

    def __init__(self, cfg: DataConfig, recipe: RecipeConfig, seed: int, machine: Machine, per_rank_batch: int):
        self.cfg, self.machine, self.batch = cfg, machine, per_rank_batch
        self.in_memory = cfg.source in IN_MEMORY_LOADERS
        if self.in_memory:
            self.train, self.test = load_in_memory(cfg, seed)
        else:  # image folders are cropped and flipped in the workers
            self.train, self.test = folder_datasets(
                cfg, tuple(recipe.crop_scale), recipe.hflip, recipe.interpolation.value
            )
        self.augment = BatchAugment.for_recipe(recipe, cfg.num_classes, cfg.mean, cfg.std, crop=self.in_memory)

    @property
    def device(self) -> torch.device:
        return self.machine.device

    def steps_per_epoch(self) -> int:
        return len(self.train) // (self.batch * self.machine.world)

    def train_batches(self, epoch: int, seed: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """This process's share of each global batch of the epoch, uint8, in the order (seed, epoch) draws."""
        rank, world = self.machine.rank, self.machine.world
        order = torch.Generator().manual_seed(epoch_seed(seed, epoch))  # the same on every rank
        if self.in_memory:
            yield from batches(self.train, self.batch, order, rank, world)
            return
        sampler = torch.utils.data.DistributedSampler(self.train, world, rank, shuffle=True, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        yield from torch.utils.data.DataLoader(
            self.train, self.batch, sampler=sampler, num_workers=self.cfg.workers, drop_last=True,
            pin_memory=self.machine.cuda, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch, 2 * rank)),
        )  # one loader per epoch: its workers' crops derive from (seed, epoch, rank), as engine.epoch_streams

    def augmented_batches(
        self, epoch: int, seed: int, g: torch.Generator
    ) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Training batches on the device, augmented per image from `g`, inline: a producer
        thread running ahead loses to contention on a small CPU (BENCHMARKS.md), and on a
        GPU the augmentation kernels queue behind the training step anyway."""
        for images, labels in self.train_batches(epoch, seed):
            images = images.to(self.device, non_blocking=True)
            yield self.augment.per_image(images, g), labels.to(self.device, non_blocking=True)

    def test_batches(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """This process's share of the test set, in order, uint8."""
        rank, world = self.machine.rank, self.machine.world
        if self.in_memory:
            for b in range(rank * 1024, len(self.test), 1024 * world):
                yield self.test.images[b : b + 1024], self.test.labels[b : b + 1024]
            return
        shard = torch.utils.data.Subset(self.test, list(range(rank, len(self.test), world)))
        yield from torch.utils.data.DataLoader(shard, 256, num_workers=self.cfg.workers, pin_memory=self.machine.cuda)


if __name__ == "__main__":  # `make data` where apt-get cannot run: torchvision's download into data/
    import sys

    try:
        train, test = load_fashion_mnist(sys.argv[1] if len(sys.argv) > 1 else None)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"Fashion-MNIST: {len(train)} training and {len(test)} test images")
