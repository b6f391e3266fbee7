"""`cudastack lock`: pin a cell's base image to its registry digest and its packages to hashes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from cudastack.contract import ospackages
from cudastack.contract.errors import CudastackError
from cudastack.contract.failures import log_reason
from cudastack.contract.runfolder import atomic_write
from cudastack.host.cells import stacks
from cudastack.host.cells.matrix import Cell

TORCH_INDEX_URL = "https://download.pytorch.org/whl"
PYPI_URL = "https://pypi.org/simple"


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


def platforms(cell: Cell) -> list[str]:
    """pip's --platform list for the cell's image: its base's glibc, this host's architecture
    (cells build and run here)."""
    return stacks.pip_platforms(cell.base_image, os.uname().machine)


def _download(
    cell: Cell,
    reqs: list[str],
    dest: str,
    index: list[str],
    ca_file: Optional[Path],
    no_deps: bool = False,
) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        # Only the index or wheelhouse named here: a pip configuration or PIP_* variable of
        # this host (an extra --find-links of other wheels) must not change what is locked.
        "--isolated",
        "--quiet",
        "--dest",
        dest,
        "--only-binary=:all:",
        "--python-version",
        cell.python,
        *[arg for p in platforms(cell) for arg in ("--platform", p)],
        *index,
        *(["--no-deps"] if no_deps else []),
        *(["--cert", str(ca_file)] if ca_file is not None else []),
    ]
    env = None
    if ca_file is not None:
        # pip's requests takes REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE over --cert (psf/requests
        # #3829), and --isolated does not clear them: a host that sets them to its system bundle
        # would otherwise never trust the CA given here.
        env = {**os.environ, "REQUESTS_CA_BUNDLE": str(ca_file), "CURL_CA_BUNDLE": str(ca_file)}
    proc = subprocess.run(cmd + reqs, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        why = log_reason(proc.stderr.splitlines()) or "pip download failed"
        raise LockError(f"cell {cell.name}: cannot resolve its packages: {why}")


def resolve(cell: Cell, wheelhouse: Optional[Path], ca_file: Optional[Path]) -> list[str]:
    """Lock lines ``name==version --hash=sha256:...``, hashing the files pip resolves itself
    (the PyTorch index does not always publish hashes, pytorch#164347).

    A cuDNN / NCCL pin stands in for the wheel torch's metadata pins: no resolver overrides an
    exact pin, so the pin is downloaded alone (--no-deps, as the image installs it) and replaces
    torch's wheel of that project."""
    if wheelhouse is not None:
        index = ["--no-index", "--find-links", str(wheelhouse)]
        pin_index = index
    else:
        index = ["--index-url", f"{TORCH_INDEX_URL}/{cell.index}", "--extra-index-url", PYPI_URL]
        pin_index = ["--index-url", PYPI_URL]  # NVIDIA publishes every version there
    with tempfile.TemporaryDirectory(prefix="cudastack-lock-") as tmp:
        dest, pinned = Path(tmp) / "all", Path(tmp) / "pins"
        _download(cell, requirements(cell, wheelhouse is not None), str(dest), index, ca_file)
        wheels = {_wheel_name_version(w.name)[0]: w for w in dest.iterdir()}
        if cell.library_pins():
            _download(cell, cell.library_pins(), str(pinned), pin_index, ca_file, no_deps=True)
            wheels.update({_wheel_name_version(w.name)[0]: w for w in pinned.iterdir()})
        lines = []
        for name, wheel in sorted(wheels.items()):
            version = _wheel_name_version(wheel.name)[1]
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            lines.append(f"{name}=={version} --hash=sha256:{digest}")
    return lines


def write_lock(path: Path, cell: Cell, lines: list[str]) -> None:
    # No timestamp: the same resolution must give the same file, hence the same image tag.
    header = (
        f"# cudastack lock for cell {cell.name}: torch {cell.torch} ({cell.index}), "
        f"Python {cell.python}"
        + "".join(f", {pin} (the cell's pin, over torch's own)" for pin in cell.library_pins())
        + ". Written by `cudastack lock`; installed with --require-hashes.\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    text = header + "\n".join(lines) + "\n"
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def os_lock_path(cell: Cell, locks_dir: Path) -> Path:
    """Where the OS packages of a locked cell's first build are pinned: beside its wheel lock."""
    return locks_dir / f"{cell.name}.os.txt"


def read_os_lock(path: Path) -> dict[str, str]:
    """An OS lock's pins, name -> version. Raises LockError naming the file and line for a line
    that is no ``name=version`` pin apt would take (nothing else reaches the Dockerfile)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LockError(f"cannot read OS lock {path}: {exc}") from None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, _, version = stripped.partition("=")
        if ospackages.bad_pin(name, version):
            raise LockError(
                f"{path}:{number}: {stripped[:80]!r} is not an OS package pin (name=version); "
                "fix the line, or delete the file to pin what the next build installs"
            )
    return ospackages.parse(text)


def write_os_lock(path: Path, cell: Cell, pins: dict[str, str]) -> None:
    """Pin the OS packages a build of ``cell`` installed or changed with apt: later builds of it
    (here or on another host, given the locks folder) install exactly these versions. Raises
    LockError on a pin apt would not take (nothing else may reach the file)."""
    bad = [
        f"{name}={version}" for name, version in pins.items() if ospackages.bad_pin(name, version)
    ]
    if bad:
        raise LockError(f"not OS package pins: {', '.join(bad)[:200]}")
    # The build's time is the snapshot that still serves these versions once the
    # distribution's archive has moved on.
    built = ospackages.snapshot_now()
    header = (
        f"# cudastack OS lock for cell {cell.name}: the OS packages its build installed with apt,"
        " installed at these versions by every later build of it. Delete this file to pin the"
        " versions the next build installs.\n"
        f"# Built {built}: when the archive no longer has a version, `cudastack build --cell"
        f" {cell.name} --apt-snapshot {built}` installs it from"
        " the distribution's snapshot archive.\n"
    )
    text = header + "".join(f"{name}={version}\n" for name, version in sorted(pins.items()))
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
