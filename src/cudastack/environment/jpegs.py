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

from cudastack.environment.context import CheckFailed

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


def check_batch(ctx: Any, images: Any, labels: Any, root: Path, batch: int, image: int) -> None:
    """A loader's first batch against what it must hold, before anything is timed: shape
    (batch, 3, image, image), float32 in [0, 1], the classes interleaved, and every image equal
    to its file decoded here by Pillow alone (RGB, bilinear resize, bytes / 255)."""
    from PIL import Image

    torch = ctx.torch
    if tuple(images.shape) != (batch, 3, image, image):
        raise CheckFailed(
            f"batch shape {tuple(images.shape)} != reference {(batch, 3, image, image)}"
        )
    if images.dtype != torch.float32:
        raise CheckFailed(f"batch dtype {images.dtype} != reference torch.float32")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 1:
        raise CheckFailed(f"batch values span [{low:.3g}, {high:.3g}], outside [0, 1]")
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    expected = [j % len(classes) for j in range(batch)]  # the loader's interleaved order
    if labels.tolist() != expected:
        raise CheckFailed(f"batch labels {labels.tolist()} != reference {expected}")
    for j in range(batch):
        path = sorted(classes[j % len(classes)].glob("*.jpg"))[j // len(classes)]
        with Image.open(path) as f:
            pixels = f.convert("RGB").resize((image, image), Image.Resampling.BILINEAR).tobytes()
        decoded = torch.frombuffer(bytearray(pixels), dtype=torch.uint8)
        reference = decoded.view(image, image, 3).permute(2, 0, 1).float() / 255
        ctx.check_close(images[j], reference, rtol=0, atol=1e-6, what=f"image {j} ({path.name})")


def forever(batches: Any) -> Iterator[Any]:
    """Epoch after epoch of the same loader."""
    while True:
        yield from batches
