"""`cudastack lock`: pin a cell's base image to its registry digest and its packages to hashes."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from cudastack.contract.errors import CudastackError
from cudastack.contract.failures import log_reason
from cudastack.contract.runfolder import atomic_write
from cudastack.host.cells.matrix import Cell

TORCH_INDEX_URL = "https://download.pytorch.org/whl"
PYPI_URL = "https://pypi.org/simple"
# Wheels for the images' platform: x86_64 glibc, newest manylinux tag first.
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "linux_x86_64",
)


class LockError(CudastackError):
    """A digest or package set that cannot be resolved; the message says which and why."""


def base_digest(client: Any, base_image: str) -> str:
    """``repo:tag@sha256:...`` for the base image, asked of its registry (not the local copy)."""
    from docker.errors import APIError, NotFound

    if "@sha256:" in base_image:
        return base_image
    try:
        digest = client.images.get_registry_data(base_image).id
    except (NotFound, APIError) as exc:
        text = str(getattr(exc, "explanation", "") or exc).splitlines()[0]
        raise LockError(
            f"base image {base_image}: its registry has no such tag ({text}); "
            "a retired nvidia/cuda tag answers 'manifest unknown'"
        ) from None
    return f"{base_image}@{digest}"


def pin_base(matrix_file: Path, old: str, new: str) -> None:
    """Write the digest into the matrix file in place, keeping its comments and layout."""
    text = matrix_file.read_text(encoding="utf-8")
    quoted = f'"{old}"'
    if quoted not in text:
        raise LockError(f"{matrix_file}: cannot find {quoted} to pin")
    pinned = text.replace(quoted, f'"{new}"')
    atomic_write(matrix_file, lambda p: p.write_text(pinned, encoding="utf-8"))


def _local_label(index: str) -> str:
    # The PyTorch index's wheels carry the variant as a local version (2.9.1+cu128); pinning it
    # keeps a same-numbered wheel of another variant from satisfying the requirement.
    return f"+{index}"


def requirements(cell: Cell, offline: bool) -> list[str]:
    """What the cell installs, torch pinned to its variant."""
    # A wheelhouse holds what its owner chose (plain PyPI wheels have no label): take it as is.
    label = "" if offline else _local_label(cell.index)
    reqs = [f"torch=={cell.torch}{label}"]
    if cell.torchvision:
        reqs.append(f"torchvision=={cell.torchvision}{label}")
    return reqs + list(cell.packages)


def _wheel_name_version(filename: str) -> tuple[str, str]:
    name, version = filename.split("-")[:2]
    return name.replace("_", "-").lower(), version


def resolve(cell: Cell, wheelhouse: Optional[Path], ca_file: Optional[Path]) -> list[str]:
    """Lock lines ``name==version --hash=sha256:...``, hashing the files pip resolves itself
    (the PyTorch index does not always publish hashes, pytorch#164347)."""
    with tempfile.TemporaryDirectory(prefix="cudastack-lock-") as dest:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--dest",
            dest,
            "--only-binary=:all:",
            "--python-version",
            cell.python,
            *[arg for p in PLATFORMS for arg in ("--platform", p)],
        ]
        if wheelhouse is not None:
            cmd += ["--no-index", "--find-links", str(wheelhouse)]
        else:
            cmd += ["--index-url", f"{TORCH_INDEX_URL}/{cell.index}", "--extra-index-url", PYPI_URL]
        if ca_file is not None:
            cmd += ["--cert", str(ca_file)]
        proc = subprocess.run(
            cmd + requirements(cell, wheelhouse is not None), capture_output=True, text=True
        )
        if proc.returncode != 0:
            why = log_reason(proc.stderr.splitlines()) or "pip download failed"
            raise LockError(f"cell {cell.name}: cannot resolve its packages: {why}")
        lines = []
        for wheel in sorted(Path(dest).iterdir()):
            name, version = _wheel_name_version(wheel.name)
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            lines.append(f"{name}=={version} --hash=sha256:{digest}")
    return lines


def write_lock(path: Path, cell: Cell, lines: list[str]) -> None:
    # No timestamp: the same resolution must give the same file, hence the same image tag.
    header = (
        f"# cudastack lock for cell {cell.name}: torch {cell.torch} ({cell.index}), "
        f"Python {cell.python}. Written by `cudastack lock`; installed with "
        "--require-hashes.\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    text = header + "\n".join(lines) + "\n"
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
