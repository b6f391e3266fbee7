"""The suite's catalogue: discover bench files, expand PARAMS grids into cases, select, profile.

Standard library only. Discovery reads each bench file's docstring, ``PARAMS``, ``PROFILES`` and
declarations (``KIND``, ``HEADLINE``, ``CEILING``) with ``ast`` instead of importing it, so the
host can list cases without torch installed.
"""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from cudastack.contract.errors import CudastackError, shown

# The shipped suite is package data beside this module, so a regular install finds it too.
DEFAULT_BENCH_DIR = Path(__file__).resolve().parent / "bench"


# Parameters whose values are folders of the user's, not one of the values a bench lists.
PATH_PARAMS = ("weights",)


class SuiteError(CudastackError):
    """Bad input about the suite (unknown bench, profile, parameter, malformed selection)."""


@dataclass(frozen=True)
class Profile:
    """How hard to measure: time budgets and repetition bounds for every case."""

    name: str
    warmup_s: float  # CPU warm-up (caches, allocator, thread pool)
    gpu_warmup_s: float  # GPU warm-up: long enough for clocks to ramp (do_bench's 25 ms is not)
    budget_s: float  # measuring time per case; the loop stops here even if still noisy
    min_reps: int
    max_reps: int
    noise_target: float  # stop early once the relative IQR is below this
    case_timeout_s: float  # a case still running after this becomes a failed row

    def warmup_for(self, device_type: str) -> float:
        return self.gpu_warmup_s if device_type == "cuda" else self.warmup_s


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        # smoke: every code path once at its smallest size, what a new host runs first. Its
        # numbers are not for comparing; its timeout leaves room for a torch.compile.
        Profile("smoke", 0.01, 0.1, 0.05, 3, 100, 0.05, 180.0),
        # quick's limit leaves a CPU without AVX-512 room for its bf16 cases (fallback kernels,
        # tens of seconds a case) even when the machine is shared; a hang still ends in 2 min.
        Profile("quick", 0.05, 0.5, 0.3, 5, 500, 0.02, 120.0),
        Profile("standard", 0.2, 1.0, 1.0, 10, 2000, 0.01, 300.0),
        Profile("full", 0.5, 2.0, 4.0, 20, 10000, 0.005, 900.0),
    )
}


def resolve_profile(name: str, has_gpu: bool) -> Profile:
    """``auto`` picks ``standard`` on a GPU and ``quick`` on a CPU (minutes on 2 cores)."""
    if name == "auto":
        name = "standard" if has_gpu else "quick"
    if name not in PROFILES:
        raise SuiteError(f"unknown profile {name!r}; choose one of: auto, {', '.join(PROFILES)}")
    return PROFILES[name]


def format_value(value: Any) -> str:
    """How a parameter value appears in case ids and is matched by --select."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class Case:
    """One point of a bench's parameter grid."""

    bench: str
    params: dict[str, Any] = field(hash=False)

    @property
    def id(self) -> str:
        inner = ",".join(f"{k}={format_value(v)}" for k, v in self.params.items())
        return f"{self.bench}[{inner}]"


@dataclass(frozen=True)
class BenchSpec:
    """A bench file as discovered: its name, one-line description, parameter grids and what it
    declares itself to be (its kind and headline metric, recorded on each of its rows)."""

    name: str
    path: Path
    doc: str
    params: dict[str, list[Any]]
    profiles: dict[str, dict[str, list[Any]]]
    kind: str  # KIND: "kernel" (one operation) or "workload" (an end-to-end job)
    headline: str  # HEADLINE: the metric that states its result in one number
    data_parallel: bool = False  # DATA_PARALLEL = True: runs under torchrun with --nproc N
    # ISOLATE = ["p"]: cases with different values of p never share a worker process, for state
    # a process keeps that no flag resets (cuDNN's plan cache ignores cudnn.benchmark).
    isolate: tuple[str, ...] = ()
    # CEILING = "{dtype}" or "mem": the peak name its cases' % of achievable is against, {p}
    # standing for the case's value of parameter p; '' for none. The worker measures the
    # achievable ceilings the planned kernel cases name before running them.
    ceiling: str = ""

    def ceiling_for(self, case: Case) -> str:
        """The peak name whose achievable ceiling ``case`` is stated against; '' for none."""
        return _PLACEHOLDER.sub(lambda m: format_value(case.params[m.group(1)]), self.ceiling)

    def grid(self, profile: str) -> dict[str, list[Any]]:
        return {**self.params, **self.profiles.get(profile, {})}

    def cases(self, profile: str, overrides: Optional[dict[str, str]] = None) -> list[Case]:
        grid = self.grid(profile)
        for key, text in (overrides or {}).items():
            if key in grid:
                grid[key] = [typed(key, text, grid[key][0])]
        keys = list(grid)
        return [
            Case(self.name, dict(zip(keys, combo))) for combo in itertools.product(*grid.values())
        ]


def _literal(tree: ast.Module, name: str, path: Path, what: str = "a literal dict of lists") -> Any:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            value: Optional[ast.expr] = node.value
        elif (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == name
        ):
            value = node.value  # KIND: str = "kernel" declares as much as KIND = "kernel"
        else:
            continue
        try:
            return ast.literal_eval(value) if value is not None else None
        except ValueError:
            raise SuiteError(f"{path.name}: {name} must be {what}") from None
    return None


# A parameter's value in a CEILING declaration: "{dtype}".
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _ceiling(value: Any, params: dict[str, list[Any]], path: Path) -> str:
    """The bench's CEILING, checked: a peak name, whose {p} placeholders name parameters."""
    if value is None:
        return ""
    if not isinstance(value, str) or not re.fullmatch(r"(?:\w|\{\w+\})+", value):
        raise SuiteError(
            f"{path.name}: CEILING must be a peak name in quotes, such as "
            'CEILING = "mem" or CEILING = "{dtype}" (the case\'s dtype)'
        )
    unknown = [p for p in _PLACEHOLDER.findall(value) if p not in params]
    if unknown:
        raise SuiteError(f"{path.name}: CEILING names {unknown}, which PARAMS does not have")
    return value


# What a bench declares it measures: explain tells workloads apart from the kernels they are
# made of by it, and the host records it on every row instead of guessing from names.
KINDS = ("kernel", "workload")


def _declarations(tree: ast.Module, path: Path) -> tuple[str, str]:
    """The bench's KIND and HEADLINE, or a SuiteError that says what to write."""
    kind = _literal(tree, "KIND", path, 'a literal: KIND = "kernel" or KIND = "workload"')
    if kind not in KINDS:
        found = "no KIND" if kind is None else f"KIND = {kind!r}"
        raise SuiteError(
            f'{path.name}: {found}; declare KIND = "kernel" (one operation: a GEMM, a copy) '
            'or KIND = "workload" (an end-to-end job: training, inference, data loading)'
        )
    headline = _literal(tree, "HEADLINE", path, 'a metric name in quotes: HEADLINE = "tflops"')
    if not isinstance(headline, str) or not headline.isidentifier():
        found = "no HEADLINE" if headline is None else f"HEADLINE = {headline!r}"
        raise SuiteError(
            f"{path.name}: {found}; declare the metric that states its result in one number, "
            'e.g. HEADLINE = "tflops" (or "gbps", "items_per_s", "latency_us")'
        )
    return kind, headline


def load_spec(path: Path) -> BenchSpec:
    """Read one bench file's docstring, grids and declarations without importing it.

    Raises SuiteError naming the file for a malformed grid or a missing or unknown KIND or
    HEADLINE."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as exc:
        raise SuiteError(f"{path.name}: syntax error on line {exc.lineno}: {exc.msg}") from None
    doc = (ast.get_docstring(tree) or "").strip().splitlines()
    params = _literal(tree, "PARAMS", path) or {}
    profiles = _literal(tree, "PROFILES", path) or {}
    if not isinstance(params, dict) or not all(isinstance(v, list) and v for v in params.values()):
        raise SuiteError(f"{path.name}: PARAMS must map each parameter to a non-empty list")
    for prof, grid in profiles.items():
        if prof not in PROFILES:
            raise SuiteError(f"{path.name}: PROFILES names unknown profile {prof!r}")
        unknown = set(grid) - set(params)
        if unknown:
            raise SuiteError(f"{path.name}: PROFILES[{prof!r}] sets unknown {sorted(unknown)}")
    data_parallel = _literal(tree, "DATA_PARALLEL", path) is True
    isolate = _isolate(_literal(tree, "ISOLATE", path), params, data_parallel, path)
    kind, headline = _declarations(tree, path)
    ceiling = _ceiling(_literal(tree, "CEILING", path, "a peak name in quotes"), params, path)
    return BenchSpec(
        path.stem,
        path,
        doc[0] if doc else "",
        params,
        profiles,
        kind,
        headline,
        data_parallel,
        isolate,
        ceiling,
    )


def _isolate(
    value: Any, params: dict[str, list[Any]], data_parallel: bool, path: Path
) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SuiteError(f"{path.name}: ISOLATE must be a list of parameter names")
    unknown = [v for v in value if v not in params]
    if unknown:
        raise SuiteError(f"{path.name}: ISOLATE names {unknown}, which PARAMS does not have")
    if data_parallel and value:
        # Its ranks run under torchrun, which starts them once for the whole suite.
        raise SuiteError(f"{path.name}: a DATA_PARALLEL bench cannot ISOLATE parameters")
    return tuple(value)


def discover(bench_dir: Path) -> dict[str, BenchSpec]:
    """Every ``*.py`` in the folder not starting with ``_`` is a bench, sorted by name."""
    if not bench_dir.is_dir():
        raise SuiteError(f"bench folder {bench_dir} does not exist; pass --bench-dir DIR")
    specs = {
        p.stem: load_spec(p) for p in sorted(bench_dir.glob("*.py")) if not p.name.startswith("_")
    }
    if not specs:
        raise SuiteError(f"no bench files (*.py) in {bench_dir}")
    return specs


def parse_select(items: Sequence[str]) -> dict[str, list[str]]:
    """``key=value[,value]`` pairs into {key: [values]}; repeated keys accumulate."""
    selection: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise SuiteError(
                f"malformed --select {item!r}; write key=value[,value] (e.g. dtype=bf16)"
            )
        selection.setdefault(key.strip(), []).extend(v.strip() for v in values.split(","))
    return selection


def parse_set(items: Sequence[str], specs: dict[str, BenchSpec]) -> dict[str, str]:
    """``key=value`` pairs that replace a parameter's values in every bench that has it. Each
    bench reads the value as the type of its own listed values (bool, int, float or text)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key:
            raise SuiteError(f"malformed --set {item!r}; write key=value (e.g. batch=128)")
        having = [spec for spec in specs.values() if key in spec.params]
        if not having:
            keys = sorted({k for spec in specs.values() for k in spec.params})
            raise SuiteError(
                f"--set {shown(key)}: no bench has that parameter; parameters: {', '.join(keys)}"
            )
        for spec in having:
            typed(key, text, spec.params[key][0])  # refuse a value some bench cannot take
            listed = [
                v for grid in (spec.params, *spec.profiles.values()) for v in grid.get(key, [])
            ]
            # A number may be any number; a text value must be one the bench knows (a
            # precision or size it has code for), except a folder.
            if isinstance(listed[0], str) and key not in PATH_PARAMS and text not in listed:
                raise SuiteError(
                    f"--set {shown(f'{key}={text}')}: {spec.name} knows "
                    f"{', '.join(dict.fromkeys(listed))}"
                )
        out[key] = text
    return out


def typed(key: str, text: str, example: Any) -> Any:
    """``text`` as the type of ``example``, a value the parameter already lists."""
    if isinstance(example, bool):
        if text.lower() not in ("true", "false"):
            raise SuiteError(f"--set {shown(f'{key}={text}')}: write true or false")
        return text.lower() == "true"
    for kind in (int, float):
        if isinstance(example, kind):
            try:
                return kind(text)
            except ValueError:
                raise SuiteError(f"--set {shown(f'{key}={text}')}: {key} takes a number") from None
    return text


def plan(
    specs: dict[str, BenchSpec],
    profile: str,
    benches: Optional[Sequence[str]] = None,
    select: Optional[dict[str, list[str]]] = None,
    overrides: Optional[dict[str, str]] = None,
    data_parallel: bool = False,
) -> list[Case]:
    """The cases to run, in bench then grid order, after --bench, --set and --select.

    A bench lacking a selected key is left out: asking for dtype=bf16 means cases that have one.
    ``data_parallel`` (--nproc above 1) keeps only the benches that run under torchrun.
    """
    chosen = list(benches) if benches else list(specs)
    unknown = [b for b in chosen if b not in specs]
    if unknown:
        raise SuiteError(
            f"unknown bench {', '.join(map(shown, unknown))}; choose from: {', '.join(specs)}"
        )
    if data_parallel:
        dp = [b for b in specs if specs[b].data_parallel]
        named = [b for b in chosen if not specs[b].data_parallel]
        if benches and named:
            raise SuiteError(
                f"{', '.join(named)} does not run data parallel; --nproc applies to: "
                f"{', '.join(dp) or 'no bench'}"
            )
        chosen = [b for b in chosen if specs[b].data_parallel]
    cases = [c for b in chosen for c in specs[b].cases(profile, overrides)]
    for key, wanted in (select or {}).items():
        known = list(dict.fromkeys(format_value(c.params[key]) for c in cases if key in c.params))
        if not known:
            keys = sorted({k for c in cases for k in c.params})
            raise SuiteError(
                f"no selected bench has parameter {key!r}; parameters: {', '.join(keys)}"
            )
        missing = [w for w in wanted if w not in known]
        if missing:
            raise SuiteError(
                f"{shown(key + '=' + ','.join(missing))} matches no case; values: "
                f"{', '.join(known)}"
            )
        cases = [c for c in cases if key in c.params and format_value(c.params[key]) in wanted]
    return cases


def ceilings_named(specs: dict[str, BenchSpec], cases: Sequence[Case]) -> list[str]:
    """The peak names whose achievable ceilings the kernel cases among ``cases`` are stated
    against (their benches' CEILING), each once, in the planned order: what the worker
    measures before the cases. Empty when no kernel case names one (a workload-only run)."""
    names: dict[str, None] = {}
    for case in cases:
        spec = specs.get(case.bench)
        if spec is not None and spec.kind == "kernel" and spec.ceiling:
            names[spec.ceiling_for(case)] = None
    return list(names)


def process_groups(specs: dict[str, BenchSpec], cases: Sequence[Case]) -> list[list[Case]]:
    """The cases split into groups that each run in a fresh worker process, in this order.

    Two cases whose values differ for a parameter their bench ISOLATEs are never in one group;
    each case joins the first group it may join, so cases of benches without ISOLATE all stay
    in group 0 and a suite without ISOLATE is one group (no extra process). Within a group the
    planned order is kept. Always at least one group (an empty one for no cases).
    """
    groups: list[tuple[dict[str, Any], list[Case]]] = []
    for case in cases:
        spec = specs.get(case.bench)
        wants = {k: case.params[k] for k in (spec.isolate if spec else ()) if k in case.params}
        for fixed, members in groups:
            # Compare formatted values: True and 1 are equal in Python but not as parameters.
            if all(format_value(fixed.get(k, v)) == format_value(v) for k, v in wants.items()):
                fixed.update(wants)
                members.append(case)
                break
        else:
            groups.append((dict(wants), [case]))
    return [members for _, members in groups] or [[]]


def check_device(device: str) -> None:
    """Raise SuiteError unless ``device`` (--device) is auto, cpu, cuda or cuda:N."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise SuiteError(f"--device {device!r}: choose auto, cpu, cuda or cuda:N (N a GPU index)")


def check_threads(threads: int) -> None:
    """Raise SuiteError unless ``threads`` (--threads) is 0 (every usable core) or more."""
    if threads < 0:
        raise SuiteError(f"--threads {threads}: give 1 or more, or 0 for every usable core")
