"""`cudastack check`: a cell's torch wheel exists and its packages resolve, before a build."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import ssl
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from cudastack.contract import redact
from cudastack.host.cells import stacks
from cudastack.host.cells.lock import PYPI_URL, requirements
from cudastack.host.cells.matrix import Cell

# The torch x variant table is stacks.py's (REFERENCE.md "PyTorch wheels per CUDA variant").
VARIANTS_SOURCE = "the PyTorch wheel indexes download.pytorch.org/whl/<variant>"

TIMEOUT_S = 120.0  # one resolution; uv answers in 1-3 s with PyPI reachable


@dataclass(frozen=True)
class Rule:
    """A run-time compatibility fact that no package metadata states: versions ``versions`` of
    ``package`` need a torch in ``torch`` (PEP 440 specifiers), as ``source`` shows."""

    name: str
    package: str
    versions: str
    torch: str
    source: str


RULES = (
    # The metadata asks torch>=2.6 only under the [torch] extra, which a plain install skips.
    Rule(
        "transformers5-needs-torch2.6",
        "transformers",
        ">=5",
        ">=2.6",
        "transformers/utils/import_utils.py is_torch_available(): 'Disabling PyTorch because "
        "PyTorch >= 2.6 is required' (read in 5.24.0)",
    ),
    Rule(
        "transformers4.57-needs-torch2.1",
        "transformers",
        ">=4.57,<5",
        ">=2.1",
        "transformers/utils/import_utils.py: 'Disabling PyTorch because PyTorch >= 2.1 is "
        "required' (read in 4.57.6)",
    ),
)


class CheckUnavailable(RuntimeError):
    """The resolver itself is missing; the message says what to install."""


@dataclass(frozen=True)
class CellCheck:
    """What `check` found for one cell.

    ``problems`` are definite conflicts, one line each (package, its requirement, the cell's
    value); ``unreachable`` is why the package index could not be asked ('' when it was), in
    which case only the table and the cell's exact pins were checked."""

    cell: str
    problems: tuple = ()
    resolved: tuple = ()  # (name, version) of the resolution, sorted; empty if none
    source: str = ""  # "PyPI" or "wheelhouse DIR"
    unreachable: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


def platform(cell: Cell) -> str:
    """uv's --python-platform for the cell's base image on this host's architecture (cells
    build and run here), e.g. x86_64-manylinux_2_35 or aarch64-manylinux_2_35 on a GH200."""
    return stacks.uv_platform(cell.base_image, os.uname().machine)


def variant_problems(cell: Cell) -> list:
    """The cell's torch x variant and torchvision against what PyTorch published."""
    problems = []
    published = stacks.published_variants(cell.torch)
    if cell.index not in published:
        problems.append(
            f"torch {cell.torch} has no {cell.index} wheels (published: {', '.join(published)}; "
            f"source: {VARIANTS_SOURCE}); the cell has index {cell.index}"
        )
    want = stacks.matching_torchvision(cell.torch)
    if cell.torchvision and not cell.torchvision.startswith(want + "."):
        problems.append(
            f"torch {cell.torch} pairs with torchvision {want}.x (torchvision minor = torch "
            f"minor + 15); the cell has torchvision {cell.torchvision}"
        )
    return problems


def _pins(cell: Cell) -> dict:
    """Exact pins (name==version) of the cell's packages, by canonical name."""
    pins = {}
    for req in cell.packages:
        m = re.fullmatch(r"([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==([A-Za-z0-9.+]+)", req)
        if m:
            pins[canonicalize_name(m[1])] = m[2]
    return pins


def rule_problems(cell: Cell, versions: dict) -> list:
    """The RULES the cell breaks, given package versions by canonical name."""
    problems = []
    for rule in RULES:
        have = versions.get(rule.package)
        try:
            applies = have is not None and Version(have) in SpecifierSet(rule.versions)
        except InvalidVersion:
            applies = False
        if applies and Version(cell.torch) not in SpecifierSet(rule.torch):
            problems.append(
                f"{rule.package}=={have} needs torch {rule.torch} at run time (rule "
                f"{rule.name}, {rule.source.split()[0]}); the cell has torch {cell.torch}"
            )
    return problems


def _uv() -> str:
    try:
        from uv import find_uv_bin  # the pip-installable uv (a project dependency)

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found:
            return found
    raise CheckUnavailable("the uv resolver is not installed; pip install uv")


def _first_cause(text: str) -> str:
    """uv's reason, as one line: its 'cause:' text (or its error line), hints dropped."""
    body = text.split("hint:")[0]
    cause = body.split("cause:", 1)[1] if "cause:" in body else body.split("error:", 1)[-1]
    return " ".join(cause.split())


def conflict(text: str, cell: Cell, source: str) -> str:
    """One line naming the package, its requirement and the cell's value, from uv's report."""
    cause = _first_cause(text)
    m = re.search(r"(\S+) depends on Python([<>=!~][^\s,]+)", cause)
    if m:
        return f"{m[1]} requires Python {m[2]}; the cell has python {cell.python}"
    where = f"on {source}" if source == "PyPI" else f"in {source}"
    # A sentence's period, not the dots of a version (torch==2.12.0): followed by space or end.
    m = re.search(r"there is no version of (\S+?)(?: and|,|\.(?:\s|$)|$)", cause)
    if m:
        return f"{m[1]} is not {where}"
    m = re.search(r"was not found in the provided package locations and you require (\S+?),", cause)
    if m:
        return f"{m[1]} is not {where}"
    m = re.search(r"(\S+) has no wheels with a matching (Python ABI|Python|platform) tag", cause)
    if m:
        what = f"Python {cell.python}" if m[2].startswith("Python") else platform(cell)
        return f"{m[1]} has no wheel for {what} {where}"
    m = re.search(r"(\S+) depends on ([A-Za-z0-9._-]+)([<>=!~][^\s,]*)?", cause)
    if m:
        wanted = canonicalize_name(m[2])
        mine = [r for r in requirements(cell, True) if canonicalize_name(_name(r)) == wanted]
        has = f"; the cell has {mine[0]}" if mine else ""
        return f"{m[1]} requires {m[2]}{m[3] or ''}{has}"
    first = re.split(r", we can conclude", cause)[0]
    return first.removeprefix("Because ").strip() or "the resolver found no solution"


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0]


def _unreachable(text: str) -> Optional[str]:
    """The network cause when uv could not reach the index, else None."""
    if not re.search(r"Failed to fetch|error sending request|Could not connect|dns error", text):
        return None
    lines = [ln.strip().removeprefix("cause: ") for ln in text.splitlines() if ln.strip()]
    url = re.search(r"https?://\S+?(?=[)\s]|$)", text)
    return f"cannot reach {url[0] if url else 'the package index'}: {lines[-1]}"


class Resolution(NamedTuple):
    """What a resolution of a cell's packages gave: its pins, or why there are none."""

    pins: tuple[tuple[str, str], ...]  # (canonical name, version), sorted; () unless resolved
    conflict: str  # why the packages cannot be installed together ('' when they can)
    unreachable: str  # why the index or wheelhouse could not be asked ('' when it could)


def _compile(
    cell: Cell, reqs: list[str], wheelhouse: Optional[Path], ca_file: Optional[Path], *flags: str
) -> subprocess.CompletedProcess:
    """``uv pip compile`` of ``reqs`` for the cell's Python and platform; raises
    subprocess.TimeoutExpired after TIMEOUT_S."""
    cmd = [
        _uv(),
        "pip",
        "compile",
        "-",
        "--no-config",
        "--no-python-downloads",
        "--quiet",
        "--no-header",
        "--no-annotate",
        "--python-version",
        cell.python,
        "--python-platform",
        platform(cell),
        *flags,
    ]
    if wheelhouse is not None:
        cmd += ["--no-index", "--find-links", str(wheelhouse)]
    else:
        cmd += ["--index-url", PYPI_URL]
    env = {**os.environ, "UV_HTTP_RETRIES": "1", "UV_HTTP_TIMEOUT": "30"}
    if ca_file is not None:
        env["SSL_CERT_FILE"] = str(ca_file)  # the --ca-file builds use, for a TLS proxy
    return subprocess.run(
        cmd,
        input="\n".join(reqs) + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT_S,
    )


def _pairs(stdout: str) -> dict:
    return {
        canonicalize_name(n): v
        for n, v in re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", stdout, re.MULTILINE)
    }


def published_versions(
    name: str, wheelhouse: Optional[Path], ca_file: Optional[Path]
) -> Optional[list]:
    """Released versions of project ``name`` in the wheelhouse (by file name) or on PyPI (its
    simple API, PEP 691), newest first; None when PyPI cannot be asked."""
    wanted = canonicalize_name(name)
    found: set = set()
    if wheelhouse is not None:
        for wheel in wheelhouse.glob("*.whl"):
            project, version = wheel.name.split("-")[:2]
            if canonicalize_name(project) == wanted:
                found.add(version)
    else:
        request = urllib.request.Request(
            f"{PYPI_URL}/{wanted}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
        )
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        try:
            with urllib.request.urlopen(request, timeout=30, context=context) as answer:
                found = set(json.load(answer).get("versions", ()))
        except (OSError, ValueError):
            return None
    releases = []
    for version in found:
        try:
            if not Version(version).is_prerelease:  # NVIDIA's .dev uploads pick no pin
                releases.append(Version(version))
        except InvalidVersion:
            continue
    return [str(v) for v in sorted(releases, reverse=True)]


def pin_problem(
    cell: Cell, pin: str, wheelhouse: Optional[Path], ca_file: Optional[Path]
) -> tuple[str, str]:
    """(problem, unreachable) for one library pin (nvidia-cudnn-cu13==9.19.1.2): whether that
    wheel exists for the cell's Python and platform. It is resolved alone (--no-deps), as the
    image installs it over torch's own pin."""
    source = f"wheelhouse {wheelhouse}" if wheelhouse is not None else "PyPI"
    try:
        proc = _compile(cell, [pin], wheelhouse, ca_file, "--no-deps")
    except subprocess.TimeoutExpired:
        return "", f"the resolution from {source} took over {TIMEOUT_S:g} s"
    if proc.returncode == 0:
        return "", ""
    stderr = redact.text(proc.stderr, redact.secret_values(os.environ))
    down = _unreachable(stderr)
    if down:
        return "", down
    name, version = pin.split("==")
    where = f"on {source}" if source == "PyPI" else f"in {source}"
    versions = published_versions(name, wheelhouse, ca_file)
    if versions is None:
        return "", f"PyPI did not answer for {name}'s versions"
    if version in versions:  # published, but not for this Python or platform
        return f"{name} {version} has no wheel for {platform(cell)} {where}", ""
    shown = ", ".join(versions[:12]) + (", ..." if len(versions) > 12 else "")
    listed = f"; versions: {shown}" if versions else f"; it has no versions {where}"
    field = "cudnn" if "-cudnn-" in name else "nccl"
    return f"{name} has no version {version} {where}{listed} (the cell's {field})", ""


def resolve(cell: Cell, wheelhouse: Optional[Path], ca_file: Optional[Path]) -> Resolution:
    """The cell's packages resolved by uv for its Python and platform, from PyPI or, offline,
    from ``wheelhouse`` alone; a cuDNN / NCCL pin replaces torch's own in the pins."""
    # The PyTorch index cannot always be reached (and need not be): torch's PyPI build of the
    # same version stands in for the variant's wheel. Its metadata differs only in which
    # nvidia-* wheels it pins, which no other package depends on; that the variant exists at
    # all is variant_problems' job.
    source = f"wheelhouse {wheelhouse}" if wheelhouse is not None else "PyPI"
    try:
        proc = _compile(cell, requirements(cell, True), wheelhouse, ca_file)
    except subprocess.TimeoutExpired:
        return Resolution((), "", f"the resolution from {source} took over {TIMEOUT_S:g} s")
    if proc.returncode == 0:
        pins = _pairs(proc.stdout)
        for pin in cell.library_pins():
            problem, pin_down = pin_problem(cell, pin, wheelhouse, ca_file)
            if problem or pin_down:
                return Resolution((), problem, pin_down)
            name, version = pin.split("==")
            # PyPI's torch (standing in for the variant) may pin this library for another CUDA
            # major (nvidia-cudnn-cu12 for a cu13 cell): the pin replaces it whatever its major.
            library = canonicalize_name(name).rsplit("-", 1)[0] + "-cu"
            pins = {n: v for n, v in pins.items() if not n.startswith(library)}
            pins[canonicalize_name(name)] = version
        return Resolution(tuple(sorted(pins.items())), "", "")
    # What uv says reaches build.log and a failed build's reason: a proxy URL it names (with
    # the password the environment gave it) must not.
    stderr = redact.text(proc.stderr, redact.secret_values(os.environ))
    down = _unreachable(stderr)
    if down:
        return Resolution((), "", down)
    return Resolution((), conflict(stderr, cell, source), "")


_CACHE: dict = {}
_DOWN: dict = {}  # source -> why it could not be reached: asked once per process


def lock_pins(lock: Path) -> dict:
    """The exact pins (name==version) of a hash lock, by canonical name."""
    pins = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        m = re.match(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+!]+)", line.strip())
        if m:
            pins[canonicalize_name(m[1])] = m[2]
    return pins


def check_cell(
    cell: Cell,
    wheelhouse: Optional[Path] = None,
    ca_file: Optional[Path] = None,
    lock: Optional[Path] = None,
) -> CellCheck:
    """Check one cell: the variant table, a resolution of its packages, the RULES.

    A cell with a hash ``lock`` installs exactly the lock's pins, whatever the index serves
    today: nothing is resolved, and the rules judge the lock's versions. Results are kept for
    the process by the cell's inputs, so `bench` asking again costs nothing. Raises
    CheckUnavailable when uv is not installed."""
    if lock is not None:
        problems = variant_problems(cell)
        pins = lock_pins(lock)
        problems += rule_problems(cell, pins)
        for pin in cell.library_pins():  # a lock written before the pin installs torch's own
            name, version = pin.split("==")
            if pins.get(name) != version:
                problems.append(
                    f"lock {lock.name} holds {name} {pins.get(name, '(none)')} but the cell pins "
                    f"{version}; run cudastack lock --cell {cell.name} again"
                )
        return CellCheck(
            cell.name, tuple(problems), tuple(sorted(pins.items())), f"lock {lock.name}", "", 0.0
        )
    key = (
        cell.python,
        cell.torch,
        cell.torchvision,
        cell.index,
        cell.packages,
        tuple(cell.library_pins()),
        platform(cell),
        wheelhouse,
        ca_file,
    )
    if key in _CACHE:
        return dataclasses.replace(_CACHE[key], cell=cell.name)
    started = time.perf_counter()
    source = f"wheelhouse {wheelhouse}" if wheelhouse is not None else "PyPI"
    problems = variant_problems(cell)
    resolved: tuple = ()
    down = _DOWN.get(source, "")
    if not down:
        try:
            resolved, problem, down = resolve(cell, wheelhouse, ca_file)
        except CheckUnavailable as exc:
            problem, down = "", str(exc)
        if down:
            _DOWN[source] = down
        if problem:
            problems.append(problem)
    # Unresolved, the rules still judge what the cell pins exactly.
    problems += rule_problems(cell, dict(resolved) if resolved else _pins(cell))
    result = CellCheck(
        cell.name, tuple(problems), resolved, source, down, time.perf_counter() - started
    )
    _CACHE[key] = result
    return result


def check_cells(
    cells: list, wheelhouse: Optional[Path] = None, ca_file: Optional[Path] = None
) -> list:
    """check_cell for each cell, a few at a time (uv waits on the network, not the CPU)."""
    _uv()  # a missing resolver is one error, not one per cell
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda c: check_cell(c, wheelhouse, ca_file), cells))
