"""Real data: Debian's Fashion-MNIST, image folders of real files."""

from pathlib import Path

import pytest
import torch
from PIL import Image

import roadmap
from roadmap.config import validate
from roadmap.data import DEBIAN_FASHION_MNIST, load_in_memory
from roadmap.train import run_one


def data_cfg(*overrides):
    return validate(roadmap.compose("gelu", *overrides)).data


def test_fashion_mnist_is_the_real_dataset_padded_to_32x32():
    assert DEBIAN_FASHION_MNIST.is_dir(), "run `make data`"
    train, test = load_in_memory(data_cfg())
    assert train.images.shape == (60000, 1, 32, 32) and test.images.shape == (10000, 1, 32, 32)
    assert train.images.dtype == torch.uint8
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert train.images[:, :, :2].max() == 0 and train.images[:, :, 2:30, 2:30].float().mean() > 50  # 28x28, centred


def test_a_subset_is_a_fixed_random_sample():
    a, _ = load_in_memory(data_cfg("data.train_limit=500"), seed=0)
    b, _ = load_in_memory(data_cfg("data.train_limit=500"), seed=0)
    assert len(a) == 500 and torch.equal(a.labels, b.labels) and len(set(a.labels.tolist())) == 10


def write_image_folder(root: Path, classes=("cat", "dog", "fish"), per_class=12):
    """A real train/ + val/ tree of PNG and JPEG files, each class its own colour pattern."""
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", per_class), ("val", per_class // 3)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                arr = (torch.rand(40, 48, 3, generator=g) * 60).byte()
                arr[..., c] += 150
                ext = "png" if i % 2 else "jpg"
                Image.fromarray(arr.numpy()).save(folder / f"{i}.{ext}")


def test_an_image_folder_of_real_files_trains_with_decoding_in_workers(tmp_path):
    write_image_folder(tmp_path / "imgs")
    cfg = roadmap.compose(
        "separate_downsampling", "data=imagefolder", f"data.root={tmp_path / 'imgs'}", "data.num_classes=3",
        "data.image_size=32", "data.workers=2", "recipe.epochs=2", "recipe.batch_size=12",
    )
    assert run_one(cfg, tmp_path / "run") == 0
    s = (tmp_path / "run" / "summary.json").read_text()
    assert '"status": "completed"' in s and '"resolution": 32' in s


def test_an_image_folder_with_another_number_of_classes_is_refused(tmp_path):
    write_image_folder(tmp_path / "imgs")
    from roadmap.data import DataError, folder_datasets

    with pytest.raises(DataError, match="has 3 classes but data.num_classes=10: set data.num_classes=3"):
        folder_datasets(
            data_cfg("data=imagefolder", f"data.root={tmp_path / 'imgs'}", "data.num_classes=10"), (0.08, 1)
        )
