"""The dataloader bench checks its decoded batches before timing them, with real torchvision."""

from __future__ import annotations

import importlib.util

import pytest

from cudastack.environment import jpegs, suite
from cudastack.environment.context import CheckFailed, Context
from cudastack.environment.suite import DEFAULT_BENCH_DIR

pytestmark = pytest.mark.integration

BATCH, IMAGE = 16, 64  # the quick profile's case


def _bench():
    spec = importlib.util.spec_from_file_location("dataloader", DEFAULT_BENCH_DIR / "dataloader.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _context():
    import torch

    return Context(torch, torch.device("cpu"), suite.PROFILES["quick"], None)


def test_the_real_loader_passes_its_check_and_is_timed():
    metrics = {m.name: m.values for m in _bench().run(_context(), 0, False, BATCH, IMAGE)}
    assert len(metrics["items_per_s"]) == 5 and all(r > 0 for r in metrics["items_per_s"])


def _broken(kind: str):
    """A transform that decodes the same files wrongly, in one way each."""
    from torchvision import transforms

    return {
        "wrong size": transforms.Compose(
            [transforms.Resize((IMAGE // 2, IMAGE // 2)), transforms.ToTensor()]
        ),
        "all zeros": transforms.Compose(
            [
                transforms.Resize((IMAGE, IMAGE)),
                transforms.ToTensor(),
                transforms.Lambda(lambda t: t * 0),
            ]
        ),
        "bytes, not fractions": transforms.Compose(
            [
                transforms.Resize((IMAGE, IMAGE)),
                transforms.ToTensor(),
                transforms.Lambda(lambda t: t * 255),
            ]
        ),
        "mirrored": transforms.Compose(
            [
                transforms.Resize((IMAGE, IMAGE)),
                transforms.RandomHorizontalFlip(p=1.0),
                transforms.ToTensor(),
            ]
        ),
        "float64": transforms.Compose(
            [
                transforms.Resize((IMAGE, IMAGE)),
                transforms.ToTensor(),
                transforms.Lambda(lambda t: t.double()),
            ]
        ),
    }[kind]


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("wrong size", f"batch shape (16, 3, 32, 32) != reference (16, 3, {IMAGE}, {IMAGE})"),
        ("all zeros", "image 0 (img_00000.jpg) differs from reference"),
        ("bytes, not fractions", "batch values span [0, 2"),  # up to 255, not 1
        ("mirrored", "image 0 (img_00000.jpg) differs from reference"),
        ("float64", "batch dtype torch.float64 != reference torch.float32"),
    ],
)
def test_a_loader_that_decodes_wrongly_fails_before_timing(monkeypatch, kind, reason):
    real_loader = jpegs.loader

    def broken_loader(*args, **kwargs):
        # The real ImageFolder DataLoader over the same files, with a faulty transform.
        loader = real_loader(*args, **kwargs)
        loader.dataset.transform = _broken(kind)
        return loader

    monkeypatch.setattr(jpegs, "loader", broken_loader)
    ctx = _context()
    with pytest.raises(CheckFailed) as failed:
        _bench().run(ctx, 0, False, BATCH, IMAGE)
    assert str(failed.value).startswith(reason)
