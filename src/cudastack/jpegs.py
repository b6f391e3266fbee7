"""A folder of real JPEG files in torchvision's ImageFolder layout, and a DataLoader over it.

Environment side: torch, torchvision and Pillow, imported by the data-loading benchmarks only.
"""

from __future__ import annotations

import atexit
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_FOLDERS: dict[tuple[int, int, int], Path] = {}
CLASSES = 4


def folder(classes: int, per_class: int, side: int) -> Path:
    """A temporary folder of JPEGs, written once per process and shape, removed at exit: every
    case reads the same files, and writing a thousand of them is seconds of work."""
    key = (classes, per_class, side)
    if key not in _FOLDERS:
        root = Path(tempfile.mkdtemp(prefix="cudastack-jpegs-"))
        atexit.register(shutil.rmtree, root, True)
        write_folder(root, classes, per_class, side)
        _FOLDERS[key] = root
    return _FOLDERS[key]


def write_folder(root: Path, classes: int, per_class: int, side: int, seed: int = 0) -> int:
    """Write ``classes`` x ``per_class`` JPEGs of ``side`` pixels; returns the bytes written.

    Each class has its own mean colour under per-pixel noise: decodable work like a photo's
    (noise does not compress away) and learnable, so a classifier's loss can fall."""
    from PIL import Image

    rng = random.Random(seed)
    total = 0
    for c in range(classes):
        folder = root / f"class_{c:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = [rng.randrange(40, 216) for _ in range(3)]
        for i in range(per_class):
            # Pillow's own noise generator (C speed); a per-channel lookup table shifts it.
            channels = [
                Image.effect_noise((side, side), 48).point(lambda v, o=base[k] - 128: v + o)
                for k in range(3)
            ]
            path = folder / f"img_{i:05d}.jpg"
            Image.merge("RGB", channels).save(path, "JPEG", quality=90)
            total += path.stat().st_size
    return total


def image_batches(
    ctx: Any, batches_per_epoch: int, image: int, batch: int, num_workers: int, pin_memory: bool
) -> Any:
    """The DataLoader over a JPEG folder of ``classes`` x enough images for the epoch, written
    a little larger than ``image`` so Resize does real work; skips what this run cannot do."""
    ctx.require("torchvision")
    if pin_memory and not ctx.is_cuda:
        ctx.skip("pin_memory only speeds copies to a GPU; this run is on cpu")
    root = folder(CLASSES, batches_per_epoch * batch // CLASSES, round(image * 8 / 7))
    return loader(ctx.torch, root, image, batch, num_workers, pin_memory)


def loader(
    torch: Any, root: Path, image: int, batch: int, num_workers: int, pin_memory: bool
) -> Any:
    """ImageFolder with Resize + ToTensor in a fixed order, workers kept alive across epochs so
    an epoch boundary does not restart them."""
    from torchvision import datasets, transforms

    data = datasets.ImageFolder(
        str(root),
        transform=transforms.Compose([transforms.Resize((image, image)), transforms.ToTensor()]),
    )
    # Classes interleaved (ImageFolder lists them one after another), in the same order every
    # epoch: each batch holds every class, and epochs repeat the same batches.
    per_class = len(data) // len(data.classes)
    order = [c * per_class + i for i in range(per_class) for c in range(len(data.classes))]
    return torch.utils.data.DataLoader(
        data,
        batch_size=batch,
        sampler=order,
        drop_last=True,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


def forever(batches: Any) -> Iterator[Any]:
    """Epoch after epoch of the same loader."""
    while True:
        yield from batches
