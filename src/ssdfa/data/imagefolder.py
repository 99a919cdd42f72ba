"""A train/val tree of images, one folder per class (Tiny ImageNet, ImageNet), read per batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetCorrupt, DatasetError
from . import roots
from .registry import dataset_entry, not_found, register
from .splits import Dataset, Split

_MAX_PIXELS = 64 * 2**20  # 64 megapixels: beyond any ImageNet photo; PIL's own bomb limit is 89M
_IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp"}
_IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
_IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


class ImageFolderSplit(Split):
    """Images read from disk per batch, resized (shorter side) and centre-cropped to a square."""

    def __init__(self, items: list[tuple[Path, int]], size: int):
        self.items, self.size = items, size

    def __len__(self):
        return len(self.items)

    def _load(self, path: Path) -> torch.Tensor:
        from PIL import Image  # optional dependency, needed only by this dataset

        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                w, h = im.size
                scale = self.size / min(w, h)
                im = im.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))))
                w, h = im.size
                left, top = (w - self.size) // 2, (h - self.size) // 2
                im = im.crop((left, top, left + self.size, top + self.size))
                arr = np.asarray(im, dtype=np.uint8).copy()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise DatasetCorrupt(
                f"{path}: cannot be read as an image ({exc}); remove or "
                "replace it, then continue with --resume"
            ) from exc
        return torch.from_numpy(arr).permute(2, 0, 1)  # (3, H, W)

    def batch(self, idx):
        xs = torch.stack([self._load(self.items[int(i)][0]) for i in idx]).float().div_(255.0)
        ys = torch.tensor([self.items[int(i)][1] for i in idx], dtype=torch.long)
        return (xs - _IMAGENET_MEAN) / _IMAGENET_STD, ys


def _check_images(paths: list[Path]) -> None:
    """Open every image's header before training, so a file that is not an image (empty,
    garbage, cut inside its header, missing) is named now rather than mid-epoch.  Decoding
    every pixel would cost as much as an epoch; damage past the header is still reported, by
    name, when its batch is read."""
    from PIL import Image

    bad = []
    for path in paths:
        try:
            with Image.open(path) as im:
                im.verify()
                if im.width * im.height > _MAX_PIXELS:
                    raise ValueError(
                        f"it claims {im.width}x{im.height} pixels, more than "
                        f"{_MAX_PIXELS} (a decompression bomb?)"
                    )
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            bad.append((path, exc))
    if bad:
        path, exc = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DatasetCorrupt(f"{path}: cannot be read as an image ({why}){more}; remove or replace it")


def _scan_classes(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    items = []
    for k, cls in enumerate(classes):
        for p in sorted((folder / cls).rglob("*")):
            if p.suffix.lower() in _IMAGE_EXT:
                items.append((p, k))
    return items


def _tiny_imagenet_val(root: Path, annotations: Path, index: dict[str, int]) -> list[tuple[Path, int]]:
    """Tiny ImageNet's val/images/*.JPEG, labelled by the table in val_annotations.txt."""
    try:
        lines = annotations.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DatasetCorrupt(
            f"{annotations}: not UTF-8 text ({exc.reason} at byte "
            f"{exc.start}); restore the file from the dataset"
        ) from None
    val = []
    for line in lines:
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1] in index:
            val.append((root / "val" / "images" / parts[0], index[parts[1]]))
    return val


def _find_root(data_dir) -> Path:
    entry = dataset_entry("imagefolder")
    root = next(
        (
            c
            for c in roots.candidates(data_dir, entry.subdirs)
            if (c / "train").is_dir() and (c / "val").is_dir()
        ),
        None,
    )
    if root is None:
        raise not_found("imagefolder", data_dir)
    try:
        import PIL  # noqa: F401  (optional dependency: say so before scanning)
    except ImportError as exc:
        raise DatasetError("the imagefolder dataset needs Pillow: pip install pillow") from exc
    return root


def _first_image_size(path: Path) -> int:
    """Square images up to 256 pixels keep their size; anything else is cut to 224x224."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
    return w if w == h and w <= 256 else 224


@register(
    "imagefolder",
    files=("train", "val"),
    subdirs=("tiny-imagenet-200", "imagenet", "imagefolder"),
    input_shape=None,
    num_classes=None,
    default_model="alexnet",
    presets=(("imagenet", (3, 224, 224), 1000),),
    how="Arrange images as DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg (Tiny ImageNet's "
    "val/images + val_annotations.txt layout is also read).",
    summary="a train/val tree of images, one folder per class (Tiny ImageNet, ImageNet)",
)
def _load_imagefolder(data_dir=None, download=False, image_size=None, **_):
    root = _find_root(data_dir)
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise DatasetCorrupt(f"{root / 'train'}: no class folders")
    train = _scan_classes(root / "train", classes)
    annotations = root / "val" / "val_annotations.txt"
    if annotations.is_file():
        val = _tiny_imagenet_val(root, annotations, {c: k for k, c in enumerate(classes)})
    else:
        val = _scan_classes(root / "val", classes)
    if not train or not val:
        raise DatasetCorrupt(f"{root}: found {len(train)} train and {len(val)} val images")
    _check_images([p for p, _ in train + val])
    if image_size is None:
        image_size = _first_image_size(train[0][0])
    return Dataset(
        "imagefolder",
        ImageFolderSplit(train, image_size),
        ImageFolderSplit(val, image_size),
        (3, image_size, image_size),
        len(classes),
        source=str(root),
    )
