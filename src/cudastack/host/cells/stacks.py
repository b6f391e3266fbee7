"""Published facts about stacks: torch x CUDA wheel variants, CUDA driver floors, image tags.

Sources: the PyTorch wheel indexes per variant and the CUDA Toolkit release notes (Linux x86_64).
"""

from __future__ import annotations

import re
from typing import NamedTuple, Optional

# torch minor -> wheel index variants published for it ("cpu" always exists).
_VARIANTS_BY_MINOR = {
    **{m: ("cu118", "cu121") for m in (1, 2, 3)},
    **{m: ("cu118", "cu121", "cu124") for m in (4, 5)},
    6: ("cu118", "cu124", "cu126"),
    7: ("cu118", "cu126", "cu128"),
    8: ("cu126", "cu128", "cu129"),
    **{m: ("cu126", "cu128", "cu130") for m in (9, 10, 11)},
}
_LATEST_VARIANTS = ("cu129", "cu130")  # torch 2.12 onward

# CUDA toolkit (major, minor) -> minimum driver for full support.
DRIVER_FLOORS = {
    (11, 8): "520.61.05",
    (12, 1): "530.30.02",
    (12, 4): "550.54.15",
    (12, 6): "560.35.05",
    (12, 8): "570.26",
    (12, 9): "575.51.03",
    (13, 0): "580.65.06",
}
# Minor-version compatibility: any toolkit of a major runs on this driver, with a limited
# feature set (PTX JIT of newer code can fail).
MINOR_COMPAT_FLOORS = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}

# Python that each Ubuntu release of the nvidia/cuda images ships through apt.
UBUNTU_PYTHONS = {
    "ubuntu20.04": ("3.8", "3.9"),
    "ubuntu22.04": ("3.10", "3.11"),
    "ubuntu24.04": ("3.12",),
}

# glibc (major, minor) of a base image's OS, from its libc6 package: a wheel installs in the image
# when one of its manylinux tags is at or below this. A base not listed is held to 2.28, what
# torch's own wheels target. Source: the Ubuntu and Debian libc6 packages of each release.
GLIBC = {
    "ubuntu20.04": (2, 31),
    "ubuntu22.04": (2, 35),
    "ubuntu24.04": (2, 39),
    "debian11": (2, 31),
    "bullseye": (2, 31),
    "debian12": (2, 36),
    "bookworm": (2, 36),
}
DEFAULT_GLIBC = (2, 28)
# The oldest glibc a PEP 600 tag names: manylinux2014 is manylinux_2_17, and pip reads the legacy
# aliases only when they are listed (it does not fill in the tags between two --platform values).
OLDEST_MANYLINUX_MINOR = 17
LEGACY_MANYLINUX = ("manylinux2014", "manylinux2010", "manylinux1")

_NVIDIA_TAG = re.compile(
    r"^(?P<cuda>\d+\.\d+)\.\d+-(?:(?P<cudnn>cudnn\d*)-)?(?P<flavour>base|runtime|devel)"
    r"(?:-(?P<cudnn_after>cudnn\d*))?-(?P<os>[a-z]+\d+\.\d+)$"
)


def variant_cuda(index: str) -> Optional[str]:
    """'cu128' -> '12.8', 'cu118' -> '11.8', 'cpu' -> None."""
    m = re.fullmatch(r"cu(\d+)(\d)", index)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def torch_minor(version: str) -> int:
    m = re.match(r"2\.(\d+)\.\d+", version)
    if not m:
        raise ValueError(f"torch version {version!r} is not of the form 2.MINOR.PATCH")
    return int(m.group(1))


def published_variants(torch_version: str) -> tuple:
    """The wheel index variants PyTorch published for this torch release."""
    minor = torch_minor(torch_version)
    if minor < 1:
        return ("cpu",)
    return ("cpu", *_VARIANTS_BY_MINOR.get(minor, _LATEST_VARIANTS))


def matching_torchvision(torch_version: str) -> str:
    """torchvision's minor is torch's minor + 15 (torch 2.9 -> torchvision 0.24)."""
    return f"0.{torch_minor(torch_version) + 15}"


def parse_nvidia_tag(tag: str) -> Optional[dict]:
    """Fields of an nvidia/cuda tag such as 12.8.1-cudnn-runtime-ubuntu24.04, or None."""
    m = _NVIDIA_TAG.match(tag)
    if not m:
        return None
    return {
        "cuda": m["cuda"],
        "cudnn": m["cudnn"] or m["cudnn_after"] or "",
        "flavour": m["flavour"],
        "os": m["os"],
    }


def base_os(base_image: str) -> str:
    """The OS of a base image as GLIBC names it: the nvidia/cuda tag's (ubuntu24.04), else the
    repository's last part joined to its tag's release (ubuntu:24.04 -> ubuntu24.04, debian:12-slim
    -> debian12), or that release alone (bookworm)."""
    repo, _, tag = base_image.split("@")[0].rpartition(":")
    if "/" in tag:  # a registry port and no tag: registry:5000/image
        repo, tag = base_image.split("@")[0], ""
    parsed = parse_nvidia_tag(tag)
    if parsed:
        return parsed["os"]
    release = tag.split("-")[0]  # bookworm-slim, 12-slim: the release's glibc all the same
    joined = f"{repo.rsplit('/', 1)[-1]}{release}"
    return joined if joined in GLIBC else release


def glibc(base_image: str) -> tuple[int, int]:
    """glibc (major, minor) that the base image's OS ships; DEFAULT_GLIBC when not known."""
    return GLIBC.get(base_os(base_image), DEFAULT_GLIBC)


def pip_platforms(base_image: str, arch: str) -> list[str]:
    """pip's --platform values for wheels that install on the base image on ``arch`` (x86_64,
    aarch64), newest first: every manylinux_2_N from its glibc down to 2_17, the legacy aliases,
    then linux_<arch>. pip matches each value exactly, so every N is listed."""
    major, minor = glibc(base_image)
    tags = [f"manylinux_{major}_{n}_{arch}" for n in range(minor, OLDEST_MANYLINUX_MINOR - 1, -1)]
    legacy = LEGACY_MANYLINUX if arch in ("x86_64", "i686") else LEGACY_MANYLINUX[:1]
    return [*tags, *(f"{name}_{arch}" for name in legacy), f"linux_{arch}"]


def uv_platform(base_image: str, arch: str) -> str:
    """uv's --python-platform for the base image on ``arch``, e.g. x86_64-manylinux_2_35 (uv
    accepts every tag at or below it)."""
    major, minor = glibc(base_image)
    return f"{arch}-manylinux_{major}_{minor}"


def library_wheel(library: str, cuda: str) -> str:
    """The PyPI wheel that carries a CUDA library torch loads, for a CUDA version:
    ('cudnn', '13.0') -> 'nvidia-cudnn-cu13' (NVIDIA publishes one project per CUDA major)."""
    return f"nvidia-{library}-cu{cuda.split('.')[0]}"


def _version_tuple(version: str) -> tuple:
    return tuple(int(p) for p in re.findall(r"\d+", version))


class DriverVerdict(NamedTuple):
    """Whether a driver runs a CUDA version: ``status`` 'ok', 'compat' (through minor-version
    compatibility: runs, newer PTX may fail) or 'no'; ``reason`` says why."""

    status: str
    reason: str


def driver_verdict(driver: str, cuda: str) -> DriverVerdict:
    """Whether ``driver`` runs CUDA ``cuda`` (e.g. '12.8'), by the driver floors above."""
    major, minor = (int(p) for p in cuda.split(".")[:2])
    have = _version_tuple(driver)
    floor = DRIVER_FLOORS.get((major, minor))
    if floor is None:
        known = [v for v in DRIVER_FLOORS if v[0] == major and v <= (major, minor)]
        floor = DRIVER_FLOORS[max(known)] if known else None
    if floor and have >= _version_tuple(floor):
        return DriverVerdict("ok", f"driver {driver} >= {floor} required by CUDA {cuda}")
    compat = MINOR_COMPAT_FLOORS.get(major)
    if compat and have >= _version_tuple(compat):
        return DriverVerdict(
            "compat",
            f"driver {driver} is below CUDA {cuda}'s {floor} but runs it through "
            f"minor-version compatibility (newer PTX may fail to JIT)",
        )
    need = floor or compat or "a newer driver"
    return DriverVerdict(
        "no", f"driver {driver} is too old for CUDA {cuda} (needs {need}); upgrade the driver"
    )


# The NVIDIA container runtime checks an image's NVIDIA_REQUIRE_* variables against the host
# before it starts a GPU container ("requirement error: unsatisfied condition: cuda>=12.8"), even
# where minor-version compatibility would run the image's CUDA. In one variable, space-separated
# terms are ORed and comma-separated conditions ANDed; several variables are ANDed; images older
# than NVIDIA_REQUIRE_CUDA are held to cuda>=MAJOR.MINOR of their CUDA_VERSION;
# NVIDIA_DISABLE_REQUIRE=true turns the check off. Properties: cuda (the highest CUDA the driver
# supports), driver, arch (compute capability of GPU 0) and brand (of GPU 0); a condition on any
# other property is ignored. Source: NVIDIA/nvidia-container-toolkit, internal/requirements and
# internal/config/image/cuda_image.go.
REQUIRE_PREFIX = "NVIDIA_REQUIRE_"
DISABLE_REQUIRE = "NVIDIA_DISABLE_REQUIRE"
_VERSION_PROPERTIES = ("cuda", "driver", "arch")
_CONDITION = re.compile(r"(?P<prop>[a-z]+)(?P<op>!=|<=|>=|=|<|>)(?P<value>.*)")
_TRUE = ("1", "t", "T", "true", "TRUE", "True")  # what Go's strconv.ParseBool reads as true


def image_requirements(env: list) -> list:
    """The requirements the runtime reads from an image's environment (``KEY=VALUE`` items)."""
    values = dict(item.partition("=")[::2] for item in env)
    if values.get(DISABLE_REQUIRE) in _TRUE:
        return []
    found = [
        value
        for key, value in sorted(values.items())
        if key.startswith(REQUIRE_PREFIX) and not key.startswith(REQUIRE_PREFIX + "JETPACK")
    ]
    legacy = re.match(r"(\d+)\.(\d+)", values.get("CUDA_VERSION", ""))
    if legacy and not values.get(REQUIRE_PREFIX + "CUDA"):
        found.append(f"cuda>={legacy[1]}.{legacy[2]}")
    return found


def derived_requirements(base_image: str) -> list:
    """What an nvidia/cuda base requires when its own configuration is not here to read: the
    cuda>=X.Y of its tag (NVIDIA's images also admit some older driver branches on some GPU
    brands; only the image itself says which). Other bases set no requirement."""
    repo, _, tag = base_image.split("@")[0].rpartition(":")
    if not repo or not (repo == "nvidia/cuda" or repo.endswith("/nvidia/cuda")):
        return []
    parsed = parse_nvidia_tag(tag)
    return [f"cuda>={parsed['cuda']}"] if parsed else []


def _holds(condition: str, host: dict) -> Optional[bool]:
    """One condition against the host's properties; None for a property the runtime ignores."""
    m = _CONDITION.fullmatch(condition)
    if not m or m["prop"] not in (*_VERSION_PROPERTIES, "brand"):
        return None
    have, want = str(host.get(m["prop"]) or ""), m["value"]
    if m["prop"] in _VERSION_PROPERTIES:
        # An unknown host value is below every version, as in the runtime's semver compare.
        a, b = _version_tuple(have), _version_tuple(want)
        width = max(len(a), len(b))
        left: tuple = (a + (0,) * (width - len(a))) if have else (-1,)
        right: tuple = b + (0,) * (width - len(b))
    else:
        left, right = (have,), (want,)
    return {
        "=": left == right,
        "!=": left != right,
        "<": left < right,
        "<=": left <= right,
        ">": left > right,
        ">=": left >= right,
    }[m["op"]]


def _requirement_holds(requirement: str, host: dict) -> bool:
    terms = []
    for term in requirement.split(" "):
        results = [_holds(c, host) for c in term.split(",") if c.strip()]
        known = [r for r in results if r is not None]
        if known:
            terms.append(all(known))
    return not terms or any(terms)


def unmet_requirement(requirements: list, host: dict) -> Optional[str]:
    """The first requirement that would stop the runtime on this host, shown by its leading term
    (e.g. 'cuda>=12.8'); None when the runtime would start the container.

    ``host`` holds the runtime's properties: cuda ('12.2'), driver ('535.104.05'), arch ('8.0'),
    brand ('tesla'); a missing one fails every condition on it, as it does in the runtime."""
    for requirement in requirements:
        if not _requirement_holds(requirement, host):
            return requirement.split()[0] if requirement.split() else requirement
    return None
