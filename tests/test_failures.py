"""Failure reasons: one line that carries the cause and its place, with a hint for known failures.

Real exceptions (raised from bench files written here, and through a real DataLoader worker),
real pip output, and build logs in the shape Docker's classic builder streams them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
from conftest import worker
from test_lock import _wheel

from cudastack.contract import failures
from cudastack.contract.failures import (
    KNOWN,
    REASON_LIMIT,
    clean,
    exception_reason,
    hint,
    shm_size_note,
)

# --- clean ----------------------------------------------------------------------------------


def test_clean_removes_escapes_and_control_characters_and_makes_one_line():
    raw = "\x1b[1;31mERROR:\x1b[0m pip\tfailed\r\n\x1b]0;title\x07  at\x00 step\x08 9\n\n"
    assert clean(raw) == "ERROR: pip failed at step 9"


def test_clean_cuts_a_long_text_with_an_ellipsis():
    text = "word " * 200
    short = clean(text, limit=50)
    assert len(short) == 50 and short.endswith("…") and short.startswith("word word")
    assert clean("short enough", limit=50) == "short enough"


# --- exceptions ------------------------------------------------------------------------------


def _load(path: Path) -> ModuleType:
    """A bench file loaded by path, as the worker loads them."""
    spec = importlib.util.spec_from_file_location(f"failures_test_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def _line_of(path: Path, text: str) -> int:
    (number,) = [i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line]
    return number


def _raised(call) -> BaseException:
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("nothing was raised")


@pytest.fixture
def chained(tmp_path):
    """A bench file whose case calls a library function that fails, and wraps the failure."""
    lib = _write(
        tmp_path / "lib" / "weights.py",
        """
        def load(path):
            raise FileNotFoundError(f"opening {path}\\nno weights file at {path}")
        """,
    )
    sys.path.insert(0, str(lib.parent))
    try:
        bench = _write(
            tmp_path / "bench" / "gemm.py",
            """
            import weights

            def run():
                try:
                    weights.load("w.pt")
                except OSError as exc:
                    raise RuntimeError("case setup failed") from exc
            """,
        )
        exc = _raised(_load(bench).run)
    finally:
        sys.path.remove(str(lib.parent))
        sys.modules.pop("weights", None)
    return exc, bench, lib


def test_the_reason_is_the_root_causes_last_line_and_the_bench_line(chained):
    exc, bench, _ = chained
    # The bench's own line, not the library's, and the file by name, not its path.
    at = _line_of(bench, "weights.load")
    reason = exception_reason(exc, bench_dir=bench.parent)
    assert reason == f"FileNotFoundError: no weights file at w.pt (at gemm.py:{at})"


def test_without_a_bench_folder_the_place_is_the_deepest_frame(chained):
    exc, _, lib = chained
    at = _line_of(lib, "raise FileNotFoundError")
    assert (
        exception_reason(exc) == f"FileNotFoundError: no weights file at w.pt (at weights.py:{at})"
    )


def test_an_exception_raised_while_handling_another_is_the_cause_and_the_other_gives_the_hint():
    def run():
        try:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except RuntimeError:
            raise ValueError("cannot retry with a smaller batch\nbatch=1 already") from None

    reason = exception_reason(_raised(run))
    assert reason.startswith("ValueError: batch=1 already (at test_failures.py:")
    # `from None` hides the context from the printout, not from the hint: the OOM is still why.
    assert reason.endswith(" — hint: " + hint("CUDA out of memory"))


def test_torch_advice_lines_are_not_taken_for_the_cause():
    message = (
        "CUDA error: device-side assert triggered\n"
        "CUDA kernel errors might be asynchronously reported at some other API call, so the "
        "stacktrace below might be incorrect.\n"
        "For debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
        "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n"
    )
    reason = exception_reason(RuntimeError(message))
    assert reason == "RuntimeError: CUDA error: device-side assert triggered"


DATASET = """
import torch

class Shm(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        raise OSError("unable to write to file </torch_123_456>: No space left on device (28)")

def run():
    for batch in torch.utils.data.DataLoader(Shm(), num_workers=1):
        pass
"""


def test_a_dataloader_workers_failure_reads_as_its_cause_with_the_shm_hint(tmp_path):
    bench = _write(tmp_path / "bench" / "loader.py", DATASET)
    exc = _raised(_load(bench).run)  # a real DataLoader: the worker process raises
    assert str(exc).startswith("Caught OSError in DataLoader worker process 0.")
    reason = exception_reason(exc, bench_dir=bench.parent)
    at = _line_of(bench, "raise OSError")  # the worker's line, which only the message quotes
    assert reason == (
        "OSError: unable to write to file </torch_123_456>: No space left on device (28) "
        f"(at loader.py:{at}) — hint: /dev/shm is full (DataLoader workers pass batches through "
        "shared memory): raise --shm-size or run with --ipc-host" + shm_size_note()
    )
    size = os.statvfs("/dev/shm")
    assert f"(/dev/shm here: {size.f_frsize * size.f_blocks / 2**20:,.0f} MiB)" in reason


def test_the_shm_size_is_that_of_the_folder_asked_for(tmp_path):
    stat = os.statvfs(tmp_path)
    mib = stat.f_frsize * stat.f_blocks / 2**20
    assert shm_size_note(str(tmp_path)) == f" ({tmp_path} here: {mib:,.0f} MiB)"
    assert shm_size_note(str(tmp_path / "missing")) == ""


def test_a_long_message_is_cut_but_its_place_and_hint_survive(tmp_path):
    bench = _write(
        tmp_path / "bench" / "big.py",
        """
        def run():
            raise RuntimeError("CUDA out of memory. " + "x" * 5000 + "\\x1b[31m!")
        """,
    )
    reason = exception_reason(_raised(_load(bench).run), bench_dir=bench.parent)
    assert len(reason) <= REASON_LIMIT
    assert "…" in reason and "\x1b" not in reason
    oom = hint("CUDA out of memory")
    assert reason.endswith(f"x… (at big.py:{_line_of(bench, 'raise')}) — hint: {oom}")


# --- known failures --------------------------------------------------------------------------

# name: (a real message of that failure, one that looks alike but is another failure)
SAMPLES = {
    "shm": [
        "RuntimeError: unable to write to file </torch_18692_1954506624>: No space left on "
        "device (28)",
        "RuntimeError: DataLoader worker (pid 4321) is killed by signal: Bus error. It is "
        "possible that dataloader's workers are out of shared memory. Please try to raise your "
        "shared memory limit.",
        "ERROR: Unexpected bus error encountered in worker. This might be caused by insufficient "
        "shared memory (shm).",
        "OSError: [Errno 28] No space left on device: '/dev/shm/torch_8821_0'",
    ],
    "gpu-oom": [
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a "
        "total capacity of 79.10 GiB of which 1.06 GiB is free.",
        "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    ],
    "arch": [
        "RuntimeError: CUDA error: no kernel image is available for execution on the device",
        "NVIDIA H200 with CUDA capability sm_90 is not compatible with the current PyTorch "
        "installation.",
    ],
    "driver": [
        "RuntimeError: CUDA driver version is insufficient for CUDA runtime version",
        "RuntimeError: The NVIDIA driver on your system is too old (found version 11040).",
        "cudaErrorCompatNotSupportedOnDevice: forward compatibility was attempted on non "
        "supported HW",
    ],
    "nccl": [
        "torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled "
        "system error (run with NCCL_DEBUG=INFO for details), NCCL version 2.21.5",
    ],
    "hash": [
        "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.",
    ],
    "apt-version": [
        "E: Version '2.10-9' for 'hello' was not found",
        "E: Version '3.11.2-6+deb12u1' for 'python3.11' was not found\n"
        "E: Version '4:12.2.0-3' for 'gcc' was not found",
    ],
    "manifest": [
        "manifest for nvidia/cuda:11.8.0-runtime-ubuntu20.04 not found: manifest unknown: "
        "manifest unknown",
    ],
    "buildkit": [
        "the --mount option requires BuildKit. Refer to https://docs.docker.com/go/buildkit/ to "
        "learn how to build images with BuildKit enabled",
        "Dockerfile parse error line 12: Unknown flag: mount",
        "/bin/sh: 1: warning: here-document at line 1 delimited by end-of-file (wanted `EOF')",
        "Error response from daemon: dockerfile parse error line 4: unknown instruction: APT-GET",
    ],
}
NEAR_MISSES = [
    "OSError: [Errno 28] No space left on device: '/home/me/results/run/results.parquet'",
    "RuntimeError: DataLoader worker (pid 77) is killed by signal: Killed.",
    "RuntimeError: CUDA error: an illegal memory access was encountered",
    "RuntimeError: Found no NVIDIA driver on your system.",
    "RuntimeError: No CUDA GPUs are available",
    "torch.distributed.DistBackendError: NCCL error: unhandled cuda error",
    "ERROR: Hashes are required in --require-hashes mode, but they are missing from some "
    "requirements.",
    "pull access denied for nowhere/base, repository does not exist or may require 'docker login'",
    "unknown flag: --shm-sizes",
    "E: Unable to locate package hello",
    "ERROR: No matching distribution found for torch==2.12.0",
]


def test_every_known_failure_has_samples_and_a_short_hint():
    assert set(SAMPLES) == {k.name for k in KNOWN}
    for known in KNOWN:
        # Room for the message: a hint takes at most half a reason.
        assert len(failures.HINT_SEP + hint(SAMPLES[known.name][0])) <= REASON_LIMIT // 2


@pytest.mark.parametrize(
    ("name", "sample"), [(name, s) for name, samples in SAMPLES.items() for s in samples]
)
def test_a_known_failure_is_recognised(name, sample):
    (known,) = [k for k in KNOWN if k.name == name]
    assert hint(sample) == f"{known.diagnosis}: {known.fix}"


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_a_look_alike_failure_gets_no_hint(text):
    assert hint(text) == ""


# --- build and pip logs ----------------------------------------------------------------------

SCRIPT = (
    'set -eu; cd /tmp/inputs; opts=""; if [ -s ca.crt ]; then opts="$opts --cert '
    '/tmp/inputs/ca.crt"; fi; if [ -s lock.txt ]; then /opt/venv/bin/pip install $opts '
    "--require-hashes --no-deps -r lock.txt; fi"
)


def _build_log(step: str, instruction: str, output: str, code: int = 1) -> list:
    """The lines images.build collects from the classic builder's stream: the step Docker
    starts (quoting the Dockerfile), what it printed, and the error chunk (quoting it again)."""
    return [
        f"Step {step} : {instruction}",
        " ---> Running in 4b1c2d3e4f5a",
        *output.splitlines(),
        f"The command '/bin/sh -c {instruction.removeprefix('RUN ')}' returned a non-zero "
        f"code: {code}",
    ]


def _pip_hash_mismatch(tmp_path: Path) -> str:
    """What this machine's pip prints when a lock's hash does not match its wheel."""
    house = tmp_path / "wheelhouse"
    house.mkdir()
    _wheel(house, "torch", "2.9.1")
    lock = tmp_path / "lock.txt"
    lock.write_text("torch==2.9.1 --hash=sha256:" + "0" * 64 + "\n")
    pip = [sys.executable, "-m", "pip", "--isolated", "download", "--no-deps", "--no-index"]
    where = ["--find-links", str(house), "--dest", str(tmp_path / "dest")]
    proc = subprocess.run(
        [*pip, *where, "--require-hashes", "-r", str(lock)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


HASH_HINT = (
    " — hint: the lock's hashes do not match the wheels (lock edited, or a wheel changed): "
    "re-run `cudastack lock --cell CELL`"
)


def test_pips_hash_mismatch_names_the_package_and_says_to_relock(tmp_path):
    output = _pip_hash_mismatch(tmp_path)
    assert "Expected sha256 " + "0" * 64 in output  # pip's own text, package lines and all
    reason = failures.log_reason(output.splitlines())
    assert reason == "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES (torch==2.9.1)" + HASH_HINT
    # In a build: the step's exit code, never the script Docker quotes.
    coloured = "\n".join(f"\x1b[31m{line}\x1b[0m" for line in output.splitlines())
    build = failures.log_reason(_build_log("9/15", f"RUN {SCRIPT}", coloured))
    assert build == (
        "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES (torch==2.9.1); step 9/15 (RUN) exited "
        "with code 1" + HASH_HINT
    )


def test_a_missing_version_names_the_requirement_and_what_exists():
    pip = (
        "Looking in links: /tmp/inputs/wheelhouse\n"
        "ERROR: Could not find a version that satisfies the requirement torch==2.12.0 (from "
        "versions: 2.6.0, 2.7.0, 2.7.1, 2.8.0, 2.9.0, 2.9.1)\n"
        "ERROR: No matching distribution found for torch==2.12.0\n"
    )
    assert failures.log_reason(_build_log("9/15", f"RUN {SCRIPT}", pip)) == (
        "ERROR: Could not find a version that satisfies the requirement torch==2.12.0 (from "
        "versions: …, 2.8.0, 2.9.0, 2.9.1); ERROR: No matching distribution found for "
        "torch==2.12.0; step 9/15 (RUN) exited with code 1"
    )


def test_the_dockerfiles_wrong_wheel_check_is_the_reason():
    check = (
        'RUN /opt/venv/bin/python -c "import sys, torch; v, c = torch.__version__, '
        "torch.version.cuda or ''; ok = v.split('+')[0] == sys.argv[1] and c == sys.argv[2]; "
        "print(f'torch {v}, torch.version.cuda {c!r}'); sys.exit(0 if ok else f'wrong wheel: "
        "torch {v} with CUDA {c!r}, the cell pins {sys.argv[1]} with CUDA {sys.argv[2]!r}')\" "
        '"$TORCH_VERSION" "$TORCH_CUDA"'
    )
    output = (
        "torch 2.13.0+cpu, torch.version.cuda ''\n"
        "wrong wheel: torch 2.13.0+cpu with CUDA '', the cell pins 2.13.0 with CUDA '12.8'"
    )
    assert failures.log_reason(_build_log("10/15", check, output)) == (
        "wrong wheel: torch 2.13.0+cpu with CUDA '', the cell pins 2.13.0 with CUDA '12.8'; "
        "step 10/15 (RUN) exited with code 1"
    )


def test_with_no_decisive_line_the_last_output_line_stands_in():
    missing = "/bin/sh: 1: cudastack-setup: not found"
    lines = _build_log("3/9", "RUN cudastack-setup --fast", missing, code=127)
    assert failures.log_reason(lines) == f"{missing}; step 3/9 (RUN) exited with code 127"
    copy = "COPY failed: file not found in build context: stat inputs/ca.crt: file does not exist"
    assert failures.log_reason(["Step 6/22 : COPY inputs/ /tmp/inputs/", copy]) == copy
    assert failures.log_reason([]) == ""


def test_a_retired_base_tag_and_buildkit_syntax_get_their_hints():
    (retired,) = SAMPLES["manifest"]
    pulled = ["Step 1/22 : FROM nvidia/cuda:11.8.0-runtime-ubuntu20.04 AS pybase", retired]
    assert failures.log_reason(pulled) == f"{retired} — hint: {hint(retired)}"
    refused = SAMPLES["buildkit"][0]
    assert failures.log_reason([refused]) == f"{refused} — hint: {hint(refused)}"


def test_a_long_log_reason_is_bounded_and_keeps_its_hint():
    lines = [f"ERROR: package-{i}==1.0 failed: " + "y" * 80 for i in range(30)]
    lines.append("ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.")
    reason = failures.log_reason(lines)
    assert len(reason) <= REASON_LIMIT and reason.endswith(HASH_HINT)
    assert reason.startswith("ERROR: package-0==1.0 failed: ")


# --- what a case's child processes printed ----------------------------------------------------


def test_a_case_whose_children_printed_nothing_keeps_its_own_reason():
    assert failures.output_reason("timed out after 5 s", []) == "timed out after 5 s"
    assert failures.output_reason("timed out after 5 s", ["", "  "]) == "timed out after 5 s"


def test_what_the_children_printed_is_their_decisive_line_with_the_hint_and_this_shm():
    lines = [
        "Traceback (most recent call last):",
        '  File "/usr/lib/python3.11/multiprocessing/queues.py", line 244, in _feed',
        "\x1b[31mRuntimeError: unable to allocate shared memory(shm) for file </torch_7_1_0>: "
        "No space left on device (28)\x1b[0m",
    ]
    reason = failures.output_reason("timed out after 60 s (profile quick)", lines)
    # The message is what gets cut to the limit; what to do, and this /dev/shm's size, stay.
    assert reason.startswith(
        "timed out after 60 s (profile quick); its child processes printed: RuntimeError: "
        "unable to allocate shared memory(shm) for file </torch_7_1_0>: No space left on "
    )
    assert reason.endswith(
        " — hint: /dev/shm is full (DataLoader workers pass batches through shared memory): "
        "raise --shm-size or run with --ipc-host" + shm_size_note()
    )
    assert len(reason) <= REASON_LIMIT and "\x1b" not in reason


def test_children_output_without_a_known_failure_gets_no_hint_and_stays_bounded():
    lines = ["warning: something odd " + "z" * 400]
    reason = failures.output_reason("timed out after 5 s", lines)
    assert reason.startswith("timed out after 5 s; its child processes printed: warning: some")
    assert len(reason) <= REASON_LIMIT and reason.endswith("…") and "hint" not in reason


# --- through the worker ----------------------------------------------------------------------

BOOM = '''
"""A bench whose cases fail: the cause on its message's second line, or deep in a library."""
import json

KIND = "kernel"
HEADLINE = "tflops"
PARAMS = {"mode": ["raise", "library"]}

def run(ctx, mode):
    if mode == "library":
        json.loads("{")
    raise ValueError("first line\\nthe real cause")
'''


def test_the_workers_row_has_the_cause_and_its_log_the_traceback(make_bench, tmp_path):
    folder = make_bench("boom", BOOM)
    out = tmp_path / "out"
    proc = worker("--out", str(out), "--bench-dir", str(folder))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    reason = {json.loads(r["params"])["mode"]: r["reason"] for r in rows}
    assert {r["status"] for r in rows} == {"failed"}
    at = _line_of(folder / "boom.py", "raise ValueError")
    assert reason["raise"] == f"ValueError: the real cause (at boom.py:{at})"
    # Raised inside the json module: the place is still the bench's line that called it.
    at_call = _line_of(folder / "boom.py", "json.loads")
    assert reason["library"] == (
        "JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 "
        f"(char 1) (at boom.py:{at_call})"
    )
    # The whole traceback, both lines of the message, on stderr (the host's log of the cell).
    assert proc.stderr.count("Traceback (most recent call last)") == 2
    assert f'boom.py", line {at}, in run' in proc.stderr
    assert "ValueError: first line\nthe real cause" in proc.stderr


@pytest.mark.parametrize(
    "progress",
    [
        "Reading package lists... ",
        "Reading package lists...",
        "Building dependency tree... 50%",
        "Reading state information... Done",
        "Reading state information... 0%\rReading state information... Done",
    ],
)
def test_an_apt_error_streamed_onto_apt_s_progress_line_is_still_the_reason(progress):
    # apt's progress line has no newline until done; its stderr error can land on that line in
    # the engine's stream, after the dots, a percentage or "Done" (seen under load in CI).
    log = [
        "Step 7/35 : RUN apt-get install -y zlib1g=0.0-gone",
        " ---> Running in ee626631d86d",
        f"{progress}E: Version '0.0-gone' for 'zlib1g' was not found",
        "Removing intermediate container ee626631d86d",
        "The command returned a non-zero code: 100",
    ]
    reason = failures.log_reason(log)
    assert reason.startswith(
        "E: Version '0.0-gone' for 'zlib1g' was not found; step 7/35 (RUN) exited with code 100"
    ), reason


def test_an_e_colon_inside_a_word_is_no_apt_error():
    log = ["Step 2/3 : RUN check", "FILE: Missing input", "The command returned a non-zero code: 1"]
    assert failures.log_reason(log).startswith("FILE: Missing input"), failures.log_reason(log)
