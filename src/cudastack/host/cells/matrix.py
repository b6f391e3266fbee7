"""The matrix of cells: load and validate matrix.toml, derive names, build args and image tags."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from cudastack.contract.errors import CudastackError
from cudastack.host.cells import stacks

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# The shipped matrix and Dockerfile are package data beside this module (the repository's docker/
# links here), so a regular install finds them too.
DEFAULT_MATRIX = Path(__file__).resolve().parent / "docker" / "matrix.toml"
IMAGE_REPO = "cudastack"

KEYS = (
    "name",
    "base_image",
    "cuda",
    "cudnn",
    "nccl",
    "torch",
    "torchvision",
    "index",
    "python",
    "packages",
)
REQUIRED = ("base_image", "torch", "index", "python")

# Everything that reaches a Dockerfile ARG or a shell command is held to these shapes, so a
# matrix can never inject a command: no spaces, quotes, $, ;, backticks or newlines.
_SAFE = {
    "name": re.compile(r"[a-z0-9][a-z0-9._-]{0,99}"),
    "base_image": re.compile(r"[a-z0-9][a-z0-9._/:-]*(@sha256:[0-9a-f]{64})?"),
    "cuda": re.compile(r"\d+\.\d+"),
    # The version of the library's nvidia-* wheel (9.19.1.2, 2.27.7), or '' for torch's own.
    "cudnn": re.compile(r"(\d+(\.\d+){2,3})?"),
    "nccl": re.compile(r"(\d+(\.\d+){2,3})?"),
    "torch": re.compile(r"2\.\d+\.\d+"),
    "torchvision": re.compile(r"0\.\d+\.\d+"),
    "index": re.compile(r"cpu|cu\d{3}"),
    "python": re.compile(r"3\.\d+"),
}
_PACKAGE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?([<>=!~]=?[A-Za-z0-9.*+]+,?)*"
)


class MatrixError(CudastackError):
    """A matrix file that cannot be used; the message names the cell and the field."""


@dataclass(frozen=True)
class Cell:
    """One pinned CUDA / cuDNN / PyTorch / Python combination.

    ``cudnn`` and ``nccl`` are versions of the nvidia-cudnn-cuNN / nvidia-nccl-cuNN wheels
    installed over torch's own pins ('' keeps the versions this torch ships)."""

    name: str
    base_image: str
    torch: str
    index: str
    python: str
    cuda: str = ""
    cudnn: str = ""
    nccl: str = ""
    torchvision: str = ""
    packages: tuple = field(default_factory=tuple)

    @property
    def torch_cuda(self) -> str:
        """What torch.version.cuda must say inside the image ('' for a CPU build)."""
        return stacks.variant_cuda(self.index) or ""

    def library_pins(self) -> list[str]:
        """The cell's library pins as requirements, e.g. ['nvidia-cudnn-cu13==9.19.1.2'],
        cuDNN first; empty for a cell that keeps torch's own."""
        pinned = (("cudnn", self.cudnn), ("nccl", self.nccl))
        return [
            f"{stacks.library_wheel(lib, self.torch_cuda)}=={version}"
            for lib, version in pinned
            if version and self.torch_cuda
        ]

    def build_args(self) -> dict:
        """Every difference between cells, as the Dockerfile's build ARGs."""
        return {
            "BASE_IMAGE": self.base_image,
            "PYTHON_VERSION": self.python,
            "TORCH_VERSION": self.torch,
            "TORCHVISION_VERSION": self.torchvision,
            "TORCH_INDEX": self.index,
            "TORCH_CUDA": self.torch_cuda,
            "EXTRA_PACKAGES": " ".join(self.packages),
            "CELL_NAME": self.name,
            # Only when pinned: an unpinned cell's args (hence its tag, and a past run's recorded
            # tag a rebuild must match) are what they were before pins existed.
            **({"CUDNN_VERSION": self.cudnn} if self.cudnn else {}),
            **({"NCCL_VERSION": self.nccl} if self.nccl else {}),
        }

    def lock_path(self, locks_dir: Path) -> Path:
        return locks_dir / f"{self.name}.txt"

    def inputs_hash(self, dockerfile: Path, locks_dir: Path) -> str:
        """Content hash of the Dockerfile, the build args and the lock file (if any)."""
        digest = hashlib.sha256(dockerfile.read_bytes())
        digest.update(json.dumps(self.build_args(), sort_keys=True).encode())
        lock = self.lock_path(locks_dir)
        digest.update(lock.read_bytes() if lock.is_file() else b"no lock")
        return digest.hexdigest()

    def image_tag(self, dockerfile: Path, locks_dir: Path) -> str:
        """An unchanged cell keeps its tag, so it is never rebuilt (PyTorch's CI does the same)."""
        return f"{IMAGE_REPO}/{self.name}:{self.inputs_hash(dockerfile, locks_dir)[:16]}"


def derive_name(fields: dict) -> str:
    """cu12.8-torch2.9.1-py3.12, or cpu-torch2.9.1-py3.12; a library pin joins it after torch
    (cu13.0-torch2.9.1-cudnn9.19.1.2-py3.12), so a pinned cell never takes its unpinned
    pair's name, and a cell without pins keeps the name it had before pins existed."""
    cuda = stacks.variant_cuda(fields["index"])
    stack = f"cu{cuda}" if cuda else "cpu"
    pins = "".join(f"-{lib}{fields[lib]}" for lib in ("cudnn", "nccl") if fields.get(lib))
    return f"{stack}-torch{fields['torch']}{pins}-py{fields['python']}"


def _fail(where: str, key: str, message: str) -> MatrixError:
    return MatrixError(f"{where}: field {key!r} {message}")


def _shown(name: object) -> str:
    """A cell's name as an error shows it: as written when it is a valid name, else quoted and
    escaped, so that the error stays one line whatever the name holds."""
    return name if isinstance(name, str) and _SAFE["name"].fullmatch(name) else repr(name)


def _check_shapes(where: str, fields: dict) -> None:
    if re.fullmatch(r"\d+", str(fields.get("cudnn", ""))):
        # The field once named the base image's cuDNN generation; say what it means now.
        raise _fail(
            where,
            "cudnn",
            f"is {fields['cudnn']!r}: it is the exact version of the nvidia-cudnn wheel torch "
            "loads (e.g. 9.19.1.2); leave it out to keep this torch's own",
        )
    for key, pattern in _SAFE.items():
        if key not in fields:
            continue
        value = fields[key]  # a null (from a recorded cell's JSON) is no valid value either
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise _fail(where, key, f"has an invalid value {value!r}")
    packages = fields.get("packages", [])
    if not isinstance(packages, list):
        raise _fail(where, "packages", "must be a list of pip requirement strings")
    for pkg in packages:
        if not isinstance(pkg, str) or not _PACKAGE.fullmatch(pkg):
            raise _fail(where, "packages", f"has an invalid requirement {pkg!r}")


def _check_stack(where: str, f: dict, variants: bool = True) -> None:
    published = stacks.published_variants(f["torch"])
    if variants and f["index"] not in published:
        raise _fail(
            where,
            "index",
            f"{f['index']} has no torch {f['torch']} wheels; published: {', '.join(published)}",
        )
    want_cuda = stacks.variant_cuda(f["index"])
    if want_cuda and f.get("cuda") != want_cuda:
        raise _fail(where, "cuda", f"must be {want_cuda} to match index {f['index']}")
    if not want_cuda and f.get("cuda"):
        raise _fail(where, "cuda", "must be empty for the cpu index")
    for library in ("cudnn", "nccl"):
        if not want_cuda and f.get(library):
            raise _fail(
                where, library, f"pins a CUDA library, but index {f['index']} is a CPU build"
            )
    tv = f.get("torchvision")
    if variants and tv and not tv.startswith(stacks.matching_torchvision(f["torch"]) + "."):
        raise _fail(
            where,
            "torchvision",
            f"{tv} does not match torch {f['torch']} "
            f"(needs {stacks.matching_torchvision(f['torch'])}.x)",
        )
    repo, _, tag = f["base_image"].split("@")[0].partition(":")
    if repo in ("nvidia/cuda", "docker.io/nvidia/cuda"):
        parsed = stacks.parse_nvidia_tag(tag)
        if parsed is None:
            raise _fail(
                where,
                "base_image",
                f"tag {tag!r} is not an nvidia/cuda tag (X.Y.Z-runtime-ubuntuNN.NN)",
            )
        if parsed["cudnn"]:
            # torch loads the cuDNN of its nvidia-cudnn wheel (or the cell's pin), never the
            # image's: a second cuDNN is gigabytes that nothing loads, and a matrix reader could
            # take it for the one measured.
            plain = f"{tag.split('-')[0]}-{parsed['flavour']}-{parsed['os']}"
            raise _fail(
                where,
                "base_image",
                f"is nvidia/cuda:{tag}, which carries a cuDNN torch does not load; use "
                f"nvidia/cuda:{plain} "
                'and pin the cuDNN torch loads with cudnn = "X.Y.Z.W"',
            )
        if want_cuda and parsed["cuda"] != want_cuda:
            raise _fail(
                where, "base_image", f"is CUDA {parsed['cuda']} but the cell is {want_cuda}"
            )
        pythons = stacks.UBUNTU_PYTHONS.get(parsed["os"])
        if pythons and f["python"] not in pythons:
            raise _fail(
                where,
                "python",
                f"{f['python']} is not packaged for {parsed['os']}; use {' or '.join(pythons)}",
            )


def load(path: Path, variants: bool = True) -> list:
    """Cells of a matrix file, validated; defaults from [defaults] apply to every cell.

    ``variants=False`` leaves torch x variant and torch x torchvision to the caller:
    `cudastack check` reports them per cell instead of refusing the whole file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MatrixError(f"matrix file {path} does not exist; pass --matrix FILE") from None
    except OSError as exc:  # a folder, no permission
        raise MatrixError(f"cannot read matrix file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise MatrixError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise MatrixError(f"{path}: not valid TOML: {exc}") from None
    unknown_top = set(data) - {"defaults", "cell"}
    if unknown_top:
        raise MatrixError(
            f"{path}: unknown table {sorted(unknown_top)[0]!r}; use [defaults] and [[cell]]"
        )
    defaults = data.get("defaults", {})
    raw_cells = data.get("cell", [])
    # `defaults = 1` or `cell = [1]` is valid TOML, but not tables of fields.
    if not isinstance(defaults, dict):
        raise MatrixError(f"{path}: 'defaults' must be a [defaults] table of fields")
    if not isinstance(raw_cells, list) or not all(isinstance(c, dict) for c in raw_cells):
        raise MatrixError(f"{path}: 'cell' must be [[cell]] tables of fields")
    if not raw_cells:
        raise MatrixError(f"{path}: no [[cell]] tables")
    cells: list = []
    seen: dict = {}
    for number, raw in enumerate(raw_cells, 1):
        fields = {**defaults, **raw}
        where = f"{path.name}: cell {_shown(raw['name']) if raw.get('name') else number}"
        cell = checked_cell(fields, where)
        _check_stack(where, fields, variants)
        if cell.name in seen:
            raise _fail(where, "name", f"{cell.name!r} repeats cell {seen[cell.name]}")
        seen[cell.name] = number
        cells.append(cell)
    return cells


def checked_cell(fields: dict, where: str) -> Cell:
    """A Cell from its fields, each known, present when required and of a safe shape (nothing
    that could reach a Dockerfile line or a shell as a command). Raises MatrixError naming
    ``where`` and the field. For a matrix's cells and for the cells a run recorded alike."""
    for key in fields:
        if key not in KEYS:
            raise _fail(where, key, f"is unknown; known fields: {', '.join(KEYS)}")
    for key in REQUIRED:
        if not fields.get(key):
            raise _fail(where, key, "is missing")
    _check_shapes(where, fields)
    named = {"name": derive_name(fields), **fields}
    return Cell(**{**named, "packages": tuple(fields.get("packages", ()))})


def select(cells: list, names: Optional[list]) -> list:
    """The named cells, in matrix order; an unknown name is an error listing the valid ones."""
    if not names:
        return list(cells)
    known = {c.name: c for c in cells}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise MatrixError(
            f"unknown cell {', '.join(map(_shown, unknown))}; cells: {', '.join(known)}"
        )
    return [c for c in cells if c.name in names]
