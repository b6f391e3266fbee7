"""Environment side entry point: run the suite's cases here and write records.jsonl + env.json.

``python -m cudastack.worker --out DIR [--bench ...] [--select k=v] [--profile ...]``
Standard library and torch only, so it runs on the bare Python inside a cell image (3.9+).
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import json
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple, Optional

from cudastack.contract import lifetime, redact, runfolder
from cudastack.contract.errors import EXIT_BAD_INPUT
from cudastack.contract.failures import exception_reason, output_reason
from cudastack.contract.request import SuiteRequest
from cudastack.contract.schema import PASSED_ENV, SAMPLES, SCHEMA_VERSION
from cudastack.contract.stats import summarize
from cudastack.environment import (
    ceilings,
    child_output,
    cpu_peak,
    envinfo,
    hostalloc,
    isolation,
    precision,
    resume,
    suite,
)
from cudastack.environment import world as worldmod
from cudastack.environment.context import CheckFailed, Context, Metric, Skip
from cudastack.environment.peaks import for_gpu
from cudastack.environment.telemetry import Nvml

# An exception under torchrun may leave the ranks at different collectives: nothing after it
# would be measured in step, so the run ends there (torchrun then stops the other ranks).
OUT_OF_STEP = "; the data-parallel processes are out of step: the run stops here"


class CaseTimeout(Exception):
    """The case ran past its profile's time limit."""


def parse_args(argv: Optional[Sequence[str]]) -> SuiteRequest:
    """The worker's command line (``None``: ``sys.argv[1:]``) as a request; exits 2 on bad input."""
    return SuiteRequest.from_argv(argv, description=__doc__)


def _bench_dir(args: SuiteRequest) -> Path:
    return args.bench_dir or suite.DEFAULT_BENCH_DIR


def _out_dir_ready(out: Path) -> None:
    # The host may have put log.txt there already; earlier results are never appended to.
    if out.exists() and (not out.is_dir() or (out / runfolder.RECORDS).exists()):
        raise suite.SuiteError(
            f"--out {out} already holds results or is a file; choose a new folder"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise suite.SuiteError(f"cannot create --out {out}: {exc.strerror}") from None


def _pick_device(torch: Any, wanted: str, world: worldmod.World) -> Any:
    suite.check_device(wanted)
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise suite.SuiteError("--device cuda asked for, but torch sees no CUDA device here")
    if world.distributed and wanted.startswith("cuda"):
        # One GPU per process: rank r on the r-th GPU this container or host can see.
        count = torch.cuda.device_count()
        if world.size > count:
            raise suite.SuiteError(
                f"--nproc {world.size} asks for more processes than the {count} GPU(s) here"
            )
        wanted = f"cuda:{world.local_rank}"
    device = torch.device(wanted)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # (CUDA 12+ creates the GPU's context here)
    if device.type == "cuda":
        # Plain "cuda" is the current device, context not yet made: a worker that only starts
        # its process groups' children (ISOLATE) then holds no GPU memory while they run,
        # unless it measured the ceilings for them first (its CUDA context, caches emptied).
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class _Modules:
    """Bench modules are imported once, on first use, by file path."""

    def __init__(self, specs: dict[str, suite.BenchSpec]) -> None:
        self._specs = specs
        self._cache: dict[str, ModuleType] = {}

    def folder(self, name: str) -> Path:
        """The folder the bench ``name`` is loaded from: a failure's place is shown in it."""
        return self._specs[name].path.parent

    def get(self, name: str) -> ModuleType:
        if name not in self._cache:
            path = self._specs[name].path
            spec = importlib.util.spec_from_file_location(f"cudastack_bench_{name}", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            self._cache[name] = module
        return self._cache[name]


class _Builtin(_Modules):
    """One module of the worker's own run as a bench module: the ceilings, so that each is a
    case as any other (time limit, skips, failures, flags restored)."""

    def __init__(self, module: ModuleType) -> None:
        super().__init__({})
        self._module = module

    def folder(self, name: str) -> Path:
        return Path(str(self._module.__file__)).parent

    def get(self, name: str) -> ModuleType:
        return self._module


def _on_alarm(signum: int, frame: Any) -> None:
    raise CaseTimeout()


def _flags(torch: Any) -> tuple[dict[str, Any], bool, bool]:
    return (
        precision.tf32_flags(torch),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )


def _restore_flags(torch: Any, saved: tuple[dict[str, Any], bool, bool]) -> None:
    # A bench may switch TF32 or cudnn.benchmark for its case; the next case starts clean.
    tf32, torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved
    precision.restore_tf32_flags(torch, tf32)


def arch_problem(torch: Any, device: Any) -> str:
    """Why this torch build has no kernels this GPU can run, or '' (also on a CPU)."""
    if device.type != "cuda" or not torch.version.cuda:
        return ""
    return envinfo.arch_problem(
        torch.__version__,
        torch.version.cuda,
        tuple(torch.cuda.get_device_capability(device)),
        list(torch.cuda.get_arch_list()),
    )


class CaseOutcome(NamedTuple):
    """How one case ended."""

    status: str  # ok | skipped | failed
    reason: str  # why it was skipped or failed; '' when ok
    metrics: list[Metric]  # what it measured; empty unless ok


def run_case(ctx: Context, modules: _Modules, case: suite.Case) -> CaseOutcome:
    """Run one case; never raises except KeyboardInterrupt."""
    torch = ctx.torch
    saved = _flags(torch)
    timeout = ctx.profile.case_timeout_s
    # Under torchrun each rank's alarm would fire on its own and leave the others waiting in
    # a collective: there, the host's per-cell time limit is what stops a case that hangs.
    use_alarm = hasattr(signal, "setitimer") and not ctx.world.distributed
    if use_alarm:
        # The alarm interrupts Python code between bytecodes; a single kernel that never returns
        # is caught one level up, by the host's per-cell time limit.
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
    children = child_output.mark()
    try:
        metrics = modules.get(case.bench).run(ctx, **case.params)
        return CaseOutcome("ok", "", list(metrics))
    except Skip as exc:
        return CaseOutcome("skipped", str(exc), [])
    except CheckFailed as exc:
        return CaseOutcome("failed", f"output check failed: {exc}", [])
    except CaseTimeout:
        # A case that waits for ever has usually lost something a child process (a DataLoader
        # worker) reported on stderr: that says why.
        head = f"timed out after {timeout:g} s (profile {ctx.profile.name})"
        return CaseOutcome("failed", output_reason(head, child_output.since(children)), [])
    except Exception as exc:  # a failed case is a row, never the end of the suite
        # The row gets one line (cause, place, hint); the traceback goes to stderr, which the
        # host keeps in the cell's log.
        sys.stdout.flush()
        print(f"{case.id} failed:", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        reason = exception_reason(exc, modules.folder(case.bench))
        return CaseOutcome("failed", reason + (OUT_OF_STEP if ctx.world.distributed else ""), [])
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
        _restore_flags(torch, saved)
        dynamo = sys.modules.get("torch._dynamo")
        if dynamo is not None:
            # Compiled graphs hold their models and count towards dynamo's recompile limit;
            # every case compiles a model of its own.
            dynamo.reset()
        gc.collect()
        if ctx.is_cuda:
            torch.cuda.empty_cache()


def case_lines(
    base: dict[str, Any], case: suite.Case, status: str, reason: str, metrics: list[Metric]
) -> list[dict[str, Any]]:
    """The case's records.jsonl lines: one per metric, its samples as SAMPLES (None where not
    finite); a skipped or failed case is one line with one sample, None (see schema.SAMPLES).

    ``base`` carries the bench's declarations (see ``declared``): a case that returns metrics
    but not the HEADLINE its bench declares fails, since its result would have no number; so
    does one whose metrics hold no sample. A metric without samples has no line (no row)."""
    if status == "ok" and metrics and not any(m.values for m in metrics):
        status, reason = "failed", "benchmark returned metrics without samples"
    metrics = [m for m in metrics if m.values]
    wanted, names = base.get("headline", ""), [m.name for m in metrics]
    if status == "ok" and names and wanted and wanted not in names:
        status = "failed"
        reason = (
            f"returned no {wanted!r} metric, which its bench declares as HEADLINE "
            f"(it returned {', '.join(names)})"
        )
    common = {
        **base,
        "bench": case.bench,
        "case": case.id,
        "params": json.dumps(case.params, sort_keys=True),
        "status": status,
        "reason": reason,
    }
    if status != "ok" or not metrics:
        return [
            {
                **common,
                "status": status if status != "ok" else "failed",
                "reason": reason or "benchmark returned no metrics",
                "metric": "",
                "unit": "",
                "better": "",
                SAMPLES: [None],
            }
        ]
    return [
        {
            **common,
            "metric": m.name,
            "unit": m.unit,
            "better": m.better,
            SAMPLES: [v if v is not None and math.isfinite(v) else None for v in m.values],
        }
        for m in metrics
    ]


def declared(spec: suite.BenchSpec) -> dict[str, str]:
    """What a bench's file declares, for each of its rows: the host classifies by it."""
    return {"kind": spec.kind, "headline": spec.headline}


def headline(metrics: list[Metric], name: str) -> str:
    """The case's number for the progress line: the metric ``name`` its bench declares (an ok
    case has it: ``case_lines`` fails one without), else its first."""
    m = next((m for m in metrics if m.name == name), metrics[0])
    s = summarize(m.values)
    noisy = ", noisy" if s.noisy else ""
    return f"{s.median:.4g} {m.unit} (n={s.n}, rel IQR {100 * s.rel_iqr:.1f}%{noisy})"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    lifetime.die_with_parent()
    world = worldmod.from_env()
    try:
        specs = suite.discover(_bench_dir(args))
        benches = list(args.benches)
        suite.check_threads(args.threads)
        selection = suite.parse_select(args.select)
        overrides = suite.parse_set(args.overrides, specs)
        if args.profile != "auto":
            suite.resolve_profile(args.profile, has_gpu=False)  # validate before importing torch
        try:
            import torch
        except ImportError:
            raise suite.SuiteError(
                f"torch is not installed in {sys.executable}; install it (pip install torch) first"
            ) from None
        device = _pick_device(torch, args.device, world)
        profile = suite.resolve_profile(args.profile, has_gpu=device.type == "cuda")
        if args.case_timeout > 0:
            profile = dataclasses.replace(profile, case_timeout_s=args.case_timeout)
        cases = suite.plan(
            specs, profile.name, benches, selection, overrides, data_parallel=world.distributed
        )
        recorded = _recorded(args)
        if recorded.cases and args.group is None and world.is_main:
            print(f"resuming: {len(recorded.cases)} cases of this process recorded", flush=True)
        cases = [c for c in cases if c.id not in recorded.cases]
        cores = envinfo.usable_cores()
        if world.distributed and device.type == "cpu" and world.size > cores:
            raise suite.SuiteError(
                f"--nproc {world.size} asks for more CPU processes than the {cores} cores here"
            )
        if world.is_main and args.process == 0 and args.group is None and not args.resume:
            _out_dir_ready(args.out)
    except suite.SuiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    # Data-parallel CPU processes share the cores; each gets its share, and so does the
    # one-process baseline that scaling efficiency is measured against.
    threads = args.threads or max(1, envinfo.usable_cores() // world.size)
    torch.set_num_threads(threads)
    child_output.start()  # before any case forks a DataLoader worker
    worldmod.init(torch, world, device, wait_s=max(1800.0, 2 * profile.case_timeout_s))
    finished = False
    try:
        code = _run_suite(args, torch, device, profile, cases, threads, world, specs, recorded)
        # Code 1 ends an out-of-step run: a peer may sit in another collective, so no barrier.
        finished = code == 0
        return code
    finally:
        worldmod.leave(torch, world, finished)


def _run_suite(
    args: SuiteRequest,
    torch: Any,
    device: Any,
    profile: suite.Profile,
    cases: list[suite.Case],
    threads: int,
    world: worldmod.World,
    specs: dict[str, suite.BenchSpec],
    recorded: resume.Recorded,
) -> int:
    # Before the first case, on every rank: each case sees the same host allocator state.
    allocator = hostalloc.fix_thresholds()
    nvml, telemetry_note = Nvml.open(torch, device)
    # Before the first case: a build without code for this GPU would fail every case with "no
    # kernel image is available"; the cell gets one row that says why instead.
    unfit = arch_problem(torch, device)
    if not world.is_main:
        return 0 if unfit else _follow(args, torch, device, profile, cases, world, specs, nvml)
    run_id = args.run_id or runfolder.new_run_id()
    rev = envinfo.harness_rev([Path(__file__).resolve().parent, _bench_dir(args)])
    fp = envinfo.fingerprint(
        torch,
        device,
        run_id=run_id,
        cell=args.cell,
        profile=profile.name,
        image_digest=args.image_digest,
        harness_rev=rev,
        threads=threads,
        cases=len(cases),
        nproc=world.size,
        telemetry=telemetry_note,
        nvml=nvml,
        nvml_note=telemetry_note,
        host_allocator=allocator,
    )
    found = for_gpu(fp["gpu"])
    if found is not None:  # env.json says which data sheet % of peak is against, or why none
        fp["gpu"]["peaks"] = found.record()
    # A CPU's peak from its cores, clock and vector ISA (or why none), for its torch threads.
    cpu = cpu_peak.for_this_cpu(torch.get_num_threads()) if device.type == "cpu" else None
    if cpu is not None:
        fp["cpu"]["peaks"] = cpu.record()
    passed = [k for k in os.environ.get(PASSED_ENV, "").split(",") if k]
    # env.json travels (export, results/reference): a token passed with --env must not.
    fp["env_passed"] = redact.environment({k: os.environ[k] for k in passed if k in os.environ})
    # A repeat runs in the same environment: the first one records it (not its process groups);
    # a resumed first process keeps the one it recorded before it was killed.
    if args.process == 0 and args.group is None and not (args.out / runfolder.ENV).is_file():
        runfolder.write_json(args.out / runfolder.ENV, fp)
    base = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "cell": args.cell,
        "image_digest": args.image_digest,
        "harness_rev": rev,
        "process": args.process,
        "pid": os.getpid(),  # records.jsonl only (not a results column): which OS process ran it
        **envinfo.record_fields(fp),
    }
    if unfit:
        return _cell_skipped(args, base, "arch", unfit)
    ctx_peaks = found.peaks if found is not None else cpu.values if cpu is not None else None
    modules = _Modules(specs)
    procs = f", {world.size} data-parallel processes" if world.distributed else ""
    print(
        f"cudastack worker: {len(cases)} cases, profile {profile.name}, device "
        f"{base['device_name']} ({device}), torch {torch.__version__}, {threads} threads{procs}; "
        f"telemetry: {fp['telemetry']}",
        flush=True,
    )
    if found is not None and found.board is None:
        print(f"no % of peak: {found.reason}", flush=True)
    if cpu is not None and cpu.values is None and args.group is None:
        print(f"no % of peak: {cpu.reason}", flush=True)
    started = time.perf_counter()  # the suite's time includes the ceilings its cases need
    achievable = _ceilings(
        args, torch, device, profile, world, nvml, specs, cases, base, recorded.ceilings
    )
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    # Torchrun starts the ranks once for the suite: data-parallel benches never ISOLATE.
    groups = [cases] if world.distributed else suite.process_groups(specs, cases)
    order = list(enumerate((c for g in groups for c in g), 1))  # numbered as run
    if args.group is not None:  # a child of the worker: its own group only
        first = sum(len(g) for g in groups[: args.group])
        order = order[first : first + len(groups[args.group])]
    elif len(groups) > 1:
        order = []

        def failed(case: suite.Case, reason: str) -> list[dict[str, Any]]:
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            fields = {**base, **declared(specs[case.bench]), "started_at": now}
            return case_lines(fields, case, "failed", reason, [])

        # The groups rerun this request; their rows are one run's, so each gets its run id.
        request = dataclasses.replace(args, run_id=run_id)
        # The ceilings reach the groups' processes measured: once a run, not once a group.
        handed = {ceilings.ENV: ceilings.encode(achievable), resume.ENV: resume.encode(recorded)}
        counts = isolation.run_groups(request, groups, args.out / runfolder.RECORDS, failed, handed)
    with open(args.out / runfolder.RECORDS, "a", encoding="utf-8") as records:
        for i, case in order:
            spec = specs[case.bench]
            # % of achievable is a kernel's: a workload's rate is not one operation's.
            ceiling = achievable if spec.kind == "kernel" else None
            ctx = _context(args, torch, device, profile, ctx_peaks, world, nvml, case, ceiling)
            at = datetime.now(timezone.utc).isoformat(timespec="seconds")
            status, reason, metrics = run_case(ctx, modules, case)
            fields = {**base, **declared(spec), "started_at": at}
            lines = case_lines(fields, case, status, reason, metrics)
            status = lines[0]["status"]
            # One write a case, flushed: a crash later still leaves every finished case on disk,
            # and a kill now tears at most this case's lines, which a resume runs again.
            records.write(runfolder.jsonl(lines))
            records.flush()
            counts[status] += 1
            detail = headline(metrics, spec.headline) if status == "ok" else lines[0]["reason"]
            print(f"[{i:>3}/{len(cases)}] {case.id:<48} {status:<7} {detail}", flush=True)
            if reason.endswith(OUT_OF_STEP):
                return 1
    if args.group is not None:
        return 0  # the parent counts the groups' cases and writes done.json
    elapsed = time.perf_counter() - started
    # done.json marks a finished suite (of the latest process, with --repeat); its time lets
    # the host tell suite time from overhead.
    done = {"suite_s": round(elapsed, 3), "process": args.process, **counts}
    runfolder.write_json(args.out / runfolder.DONE, done)
    print(
        f"done in {elapsed:.1f} s: " + ", ".join(f"{n} {k}" for k, n in counts.items()), flush=True
    )
    return 0


def _cell_skipped(args: SuiteRequest, base: dict[str, Any], stage: str, reason: str) -> int:
    """One skipped row for the whole cell, shaped as the host's harness rows are, and a
    finished suite: no case runs."""
    cell = suite.Case("harness", {"stage": stage})
    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines = case_lines({**base, "started_at": at}, cell, "skipped", reason, [])
    with open(args.out / runfolder.RECORDS, "a", encoding="utf-8") as records:
        records.write(runfolder.jsonl(lines))
    done = {"suite_s": 0.0, "process": args.process, "ok": 0, "skipped": 1, "failed": 0}
    runfolder.write_json(args.out / runfolder.DONE, {**done, "cell_skipped": reason})
    print(f"cell skipped: {reason}", flush=True)
    return 0


def _context(
    args: SuiteRequest,
    torch: Any,
    device: Any,
    profile: suite.Profile,
    peaks: Optional[dict[str, float]],
    world: worldmod.World,
    nvml: Optional[Nvml],
    case: suite.Case,
    achievable: Optional[dict[str, float]] = None,
) -> Context:
    return Context(
        torch,
        device,
        profile,
        peaks,
        # Each rank draws its own data, as data-parallel training does.
        seed=world.rank * 1_000_003,
        extra_work=args.extra_work,
        world=world,
        nvml=nvml,
        trace_dir=args.out / runfolder.TRACES if args.trace else None,
        case_id=case.id,
        achievable=achievable,
    )


def _ceilings(
    args: SuiteRequest,
    torch: Any,
    device: Any,
    profile: suite.Profile,
    world: worldmod.World,
    nvml: Optional[Nvml],
    specs: dict[str, suite.BenchSpec],
    cases: list[suite.Case],
    base: dict[str, Any],
    recorded: dict[str, float],
) -> dict[str, float]:
    """The achievable ceilings (peak name -> value) the planned kernel cases name, measured
    here before them and recorded as rows of the bench ``ceiling``; none when no kernel case
    names one. A process group's child reads its parent's instead of measuring again, and a
    resumed process reuses those it ``recorded`` (case id -> value) before it was killed."""
    if args.group is not None:
        return ceilings.decode(os.environ.get(ceilings.ENV, ""))
    if world.distributed:
        # torchrun's ranks would measure at once on shared hardware; the data-parallel benches
        # name no ceiling anyway.
        return {}
    todo = ceilings.cases(suite.ceilings_named(specs, cases), device.type)
    found = {ceilings.peak_of(c): recorded[c.id] for c in todo if c.id in recorded}
    todo = [c for c in todo if c.id not in recorded]
    if not todo:
        return found
    module = _Builtin(ceilings)
    started = time.perf_counter()
    with open(args.out / runfolder.RECORDS, "a", encoding="utf-8") as records:
        for case in todo:
            ctx = _context(args, torch, device, profile, None, world, nvml, case)
            at = datetime.now(timezone.utc).isoformat(timespec="seconds")
            status, reason, metrics = run_case(ctx, module, case)
            fields = {**base, **ceilings.declared(case), "started_at": at}
            lines = case_lines(fields, case, status, reason, metrics)
            records.write(runfolder.jsonl(lines))
            records.flush()
            status = lines[0]["status"]
            detail = lines[0]["reason"]
            value = lines[0][SAMPLES][0]
            if status == "ok" and value is not None:
                found[ceilings.peak_of(case)] = value
                detail = f"{value:.4g} {lines[0]['unit']} (best sample)"
            print(f"[ceiling] {case.id:<48} {status:<7} {detail}", flush=True)
    print(f"ceilings measured in {time.perf_counter() - started:.1f} s", flush=True)
    return found


def _recorded(args: SuiteRequest) -> resume.Recorded:
    """What an earlier attempt of this process recorded (--resume): read from the records by
    the process itself and every data-parallel rank alike (rank 0 appends only after a case
    all ranks ran), handed down to process-group children, nothing when not resuming."""
    if not args.resume:
        return resume.Recorded()
    if args.group is not None:
        return resume.handed()
    return resume.read(args.out / runfolder.RECORDS, args.process)


def _follow(
    args: SuiteRequest,
    torch: Any,
    device: Any,
    profile: suite.Profile,
    cases: list[suite.Case],
    world: worldmod.World,
    specs: dict[str, suite.BenchSpec],
    nvml: Optional[Nvml],
) -> int:
    """A rank other than 0: run every case for its collectives; rank 0 records the results."""
    modules = _Modules(specs)
    for case in cases:
        ctx = _context(args, torch, device, profile, None, world, nvml, case)
        if run_case(ctx, modules, case).reason.endswith(OUT_OF_STEP):
            print(f"rank {world.rank}: {case.id} failed{OUT_OF_STEP}", flush=True)
            return 1
    return 0
