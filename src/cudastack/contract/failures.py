"""Why something failed, in one line: the cause of an exception or a log, and a hint if known."""

from __future__ import annotations

import os
import re
import traceback
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple, Optional

from cudastack.contract import redact

# A reason is a table cell (records.jsonl, CSV, HTML) and a console line: long enough for a
# message, its place and a hint, short enough to read in one go. The full text goes to a log.
REASON_LIMIT = 320
ELLIPSIS = "…"
HINT_SEP = " — hint: "


class Known(NamedTuple):
    """A failure seen before: the text it shows, what it means, and what to do about it."""

    name: str
    symptom: re.Pattern[str]  # searched in the whole text of the failure (every line)
    diagnosis: str
    fix: str


def _re(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


# One table for every path (a case's exception, a build log, a pip run): the first match wins,
# so the narrower symptoms come first.
KNOWN: tuple[Known, ...] = (
    Known(
        "shm",
        _re(
            r"unable to (?:write to|open shared memory object|mmap)[^\n]{0,60}</?torch_"
            r"|No space left on device[^\n]{0,120}(?:/dev/shm|torch_)"
            r"|(?:/dev/shm|</?torch_)[^\n]{0,120}No space left on device"
            r"|DataLoader worker[^\n]{0,80}killed by signal: Bus error"
            r"|bus error[^\n]{0,80}insufficient shared memory"
        ),
        "/dev/shm is full (DataLoader workers pass batches through shared memory)",
        "raise --shm-size or run with --ipc-host",
    ),
    Known(
        "gpu-oom",
        _re(r"\bCUDA out of memory|\bOutOfMemoryError\b|CUBLAS_STATUS_ALLOC_FAILED"),
        "the GPU ran out of memory",
        "lower the case's batch or size with --set, or leave the case out with --select",
    ),
    Known(
        "arch",
        _re(
            r"no kernel image is available for execution"
            r"|CUDA capability sm_\d+ is not compatible with the current PyTorch"
        ),
        "this torch build has no kernels for this GPU's architecture",
        "pick a cell whose torch supports it (`cudastack check`)",
    ),
    Known(
        "driver",
        _re(
            r"CUDA driver version is insufficient"
            r"|forward compatibility was attempted on non supported HW"
            r"|NVIDIA driver on your system is too old"
        ),
        "the host's NVIDIA driver is older than the cell's CUDA needs",
        "update the driver, or pick a cell with an older CUDA (`cudastack doctor`)",
    ),
    Known(
        "nccl",
        _re(r"\bNCCL\b[^\n]{0,300}unhandled system error|\bncclSystemError\b"),
        "NCCL failed on a system call (often /dev/shm or the network interface)",
        "re-run with --env NCCL_DEBUG=INFO to see which",
    ),
    Known(
        "hash",
        _re(r"DO NOT MATCH THE HASHES"),
        "the lock's hashes do not match the wheels (lock edited, or a wheel changed)",
        "re-run `cudastack lock --cell CELL`",
    ),
    Known(
        "apt-version",
        # apt-get install NAME=VERSION, when the archive no longer serves VERSION (a rebuild
        # with the OS package versions a past build recorded)
        _re(r"Version '[^'\n]+' for '[^'\n]+' was not found"),
        "the archive no longer has a recorded OS package version",
        "rebuild from its snapshot with --apt-snapshot TIME (snapshot.debian.org, "
        "snapshot.ubuntu.com)",
    ),
    Known(
        "manifest",
        _re(r"manifest unknown"),
        "the base image's tag is not in its registry (retired)",
        "choose a current tag or pin a digest in the matrix",
    ),
    Known(
        "buildkit",
        _re(
            r"option requires BuildKit|unknown flag: (?:mount|chmod|link|parents|exclude)\b"
            r"|here-document at line \d+ delimited by end-of-file"
            r"|parse error (?:on )?line \d+: unknown instruction"
        ),
        "BuildKit-only Dockerfile syntax (cudastack builds with the classic builder)",
        "remove RUN --mount and heredocs",
    ),
)


def recognise(text: str) -> Optional[Known]:
    """The first KNOWN failure whose symptom is in ``text``, or None."""
    return next((known for known in KNOWN if known.symptom.search(text)), None)


def hint(text: str) -> str:
    """``"diagnosis: fix"`` of the KNOWN failure ``text`` shows, else ''."""
    return _advice(recognise(text))


def _advice(known: Optional[Known]) -> str:
    return f"{known.diagnosis}: {known.fix}" if known else ""


def _advice_here(known: Optional[Known]) -> str:
    """``_advice`` for a failure of a process that ran on this machine: the shm hint gets the
    size of this /dev/shm, the one that filled."""
    return _advice(known) + (shm_size_note() if known is not None and known.name == "shm" else "")


# CSI (colours, cursor moves), OSC (titles, links) and the two-character escapes.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]")


def _strip(text: str) -> str:
    """ANSI escapes and control characters removed; tabs and line breaks kept."""
    text = _ANSI.sub("", text)
    return "".join(c for c in text if c in "\t\n" or unicodedata.category(c) != "Cc").replace(
        "\r", ""
    )


def clean(text: str, limit: int = REASON_LIMIT) -> str:
    """``text`` as one readable line of at most ``limit`` characters: ANSI escapes and control
    characters removed, whitespace runs (line breaks included) made one space, and a longer text
    cut at the end, the cut marked with an ellipsis. Every recorded reason passes here: URL
    credentials, secret-looking NAME=value pairs and the values of this process's secret-looking
    variables (a token an exception message quotes) are redacted (``redact.text``)."""
    secrets = redact.secret_values(os.environ)
    line = " ".join(redact.text(_strip(text), secrets).split())
    if len(line) <= limit:
        return line
    return line[: max(0, limit - len(ELLIPSIS))].rstrip() + ELLIPSIS


def _with_hint(body: str, found: str, limit: int, keep: str = "") -> str:
    """``body`` + ``keep`` + the hint, within ``limit``: only ``body`` is cut, so where it
    happened (``keep``) and what to do (the hint) survive a long message."""
    suffix = keep + (HINT_SEP + found if found else "")
    room = limit - len(suffix)
    if room < 20:  # a limit too small for both: the plain text, cut
        return clean(body + suffix, limit)
    return clean(body, room) + suffix


# --- exceptions ---------------------------------------------------------------------------------

# An exception line inside a message (torch's DataLoader puts the worker's traceback there).
_EXC_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Failure)):\s")
_FILE_LINE = re.compile(r'^\s*File "([^"]+)", line (\d+)')
# Advice torch appends after the cause: true for every error of its kind, so never the cause.
_BOILERPLATE = _re(
    r"^(?:CUDA kernel errors might be asynchronously reported"
    r"|For debugging consider passing CUDA_LAUNCH_BLOCKING"
    r"|Compile with .TORCH_USE_CUDA_DSA"
    r"|Search for .cuda\w+' in"
    r"|Set TORCH_LOGS="
    r"|You can suppress this exception"
    r"|import torch\._dynamo"
    r"|torch\._dynamo\.config\.suppress_errors"
    r"|Original Traceback \(most recent call last\)"
    r"|Traceback \(most recent call last\))"
)


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and its explicit causes (``raise ... from``), outermost first."""
    chain, seen = [exc], {id(exc)}
    while chain[-1].__cause__ is not None and id(chain[-1].__cause__) not in seen:
        chain.append(chain[-1].__cause__)
        seen.add(id(chain[-1]))
    return chain


def _everything(exc: BaseException) -> list[BaseException]:
    """Every exception Python would print with ``exc``: causes and contexts alike."""
    found, todo, seen = [], [exc], set()
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        found.append(e)
        todo += [x for x in (e.__cause__, e.__context__) if x is not None]
    return found


def _cause_line(exc: BaseException) -> str:
    """``Type: line``, the line being the message's last that states a cause. A message that
    quotes a traceback (torch's DataLoader quotes its worker's) ends with the exception it
    quotes, type and all: that line is taken as it is."""
    lines = [x.strip() for x in _strip(str(exc)).splitlines()]
    lines = [x for x in lines if x and not _BOILERPLATE.match(x)]
    if not lines:
        return type(exc).__name__
    return lines[-1] if _EXC_LINE.match(lines[-1]) else f"{type(exc).__name__}: {lines[-1]}"


class _Frame(NamedTuple):
    filename: str
    lineno: int


def _frames(chain: Sequence[BaseException], root: BaseException) -> list[_Frame]:
    """Where the chain ran, innermost first: the frames ``root``'s message quotes (another
    process's), then the tracebacks of the chain from its root cause outwards."""
    frames = []
    for line in reversed(_strip(str(root)).splitlines()):
        m = _FILE_LINE.match(line)
        if m:
            frames.append(_Frame(m.group(1), int(m.group(2))))
    for e in reversed(chain):
        tb = traceback.extract_tb(e.__traceback__)
        frames += [_Frame(f.filename, f.lineno or 0) for f in reversed(tb)]
    return frames


def _inside(filename: str, folder: Path) -> bool:
    root = os.path.realpath(folder).rstrip(os.sep) + os.sep
    return os.path.realpath(filename).startswith(root)


def _where(frames: Sequence[_Frame], bench_dir: Optional[Path]) -> str:
    """`` (at file.py:LINE)`` for the deepest frame under ``bench_dir``, else the deepest."""
    ours = [f for f in frames if bench_dir is not None and _inside(f.filename, bench_dir)]
    picked = ours or list(frames)
    if not picked:
        return ""
    return f" (at {Path(picked[0].filename).name}:{picked[0].lineno})"


def exception_reason(
    exc: BaseException, bench_dir: Optional[Path] = None, limit: int = REASON_LIMIT
) -> str:
    """One line for a failed case: ``Type: cause (at file.py:LINE) — hint: ...``.

    The cause is the deepest exception of the explicit chain (``raise ... from``) that has a
    message, and of that message the last line that states a cause: torch's DataLoader, and
    many wrappers, end their message with what they caught (torch's generic advice lines are
    skipped). An implicit context (an exception raised while handling another) is not followed
    for the cause: there the last exception is usually the one that says what went wrong. The
    place is the deepest frame in a file under ``bench_dir`` (the bench's own line), else the
    deepest frame, its file shown by name only. The hint (see ``KNOWN``) is matched against
    every exception Python would print with ``exc``, contexts included. At most ``limit``
    characters: the message is cut, never the place or the hint."""
    chain = _causes(exc)
    root = next((e for e in reversed(chain) if str(e).strip()), exc)
    known = recognise("\n".join(f"{type(e).__name__}: {e}" for e in _everything(exc)))
    found = _advice_here(known)
    return _with_hint(_cause_line(root), found, limit, _where(_frames(chain, root), bench_dir))


def shm_size_note(path: str = "/dev/shm") -> str:
    """`` (/dev/shm here: 64 MiB)``: the size of the shared memory a process can use, for the
    shm hint (a container's is 64 MiB unless --shm-size or --ipc-host); '' where unknown."""
    try:
        stat = os.statvfs(path)
    except OSError:
        return ""
    mib = stat.f_frsize * stat.f_blocks / 2**20
    return f" ({path} here: {mib:,.0f} MiB)"


# --- build and pip logs -------------------------------------------------------------------------

_DOCKER_EXIT = re.compile(r"The command .* returned a non-zero code: (\d+)", re.DOTALL)
_EXITED = "The command returned a non-zero code: "
_STEP = re.compile(r"^Step (\d+/\d+) : (\w+)")
_HASHES = re.compile(r"THESE PACKAGES DO NOT MATCH THE HASHES")
_HASHED_PACKAGE = re.compile(r"^\s+(\S+) from \S+")
_VERSIONS = re.compile(r"\(from versions: ([^)]*)\)")
_DECISIVE = re.compile(
    r"^(?:ERROR|error|E|fatal): \S"  # pip, apt, git: their error lines
    r"|^[A-Za-z_][\w.]*(?:Error|Exception): \S"  # a Python exception's last line
    r"|wrong wheel: "  # the Dockerfile's check of the installed torch
    r"|manifest unknown|requires BuildKit|unknown flag: |unknown instruction: "
    r"|here-document at line"
)


def _short_versions(line: str) -> str:
    """pip lists every version it saw; the last few say enough."""

    def cut(m: re.Match[str]) -> str:
        versions = [v.strip() for v in m.group(1).split(",")]
        shown = ", ".join(versions[-3:])
        return f"(from versions: {'…, ' if len(versions) > 3 else ''}{shown})"

    return _VERSIONS.sub(cut, line)


def _hash_mismatch(lines: Sequence[str], at: int) -> str:
    """pip's hash error, with the packages its following lines name."""
    names = []
    for line in lines[at + 1 :]:
        m = _HASHED_PACKAGE.match(line)
        if m:
            names.append(m.group(1))
        elif line.strip() and not line.startswith(" "):
            break  # the next message
    found = f" ({', '.join(names)})" if names else ""
    return "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES" + found


def _unquoted(line: str) -> str:
    """``line`` without the Dockerfile text Docker quotes in it (a step's instruction, a failed
    command's script): that text is not the failure, and it may say anything."""
    step = _STEP.match(line)
    if step:
        return step.group(0)
    code = _DOCKER_EXIT.search(line)
    return f"{_EXITED}{code.group(1)}" if code else line


def _docker_exit(lines: Sequence[str], at: int, code: str) -> str:
    """Which step of the build exited with ``code``: the last step Docker started before."""
    for line in reversed(lines[:at]):
        step = _STEP.match(line)
        if step:
            return f"step {step.group(1)} ({step.group(2)}) exited with code {code}"
    return f"a build step exited with code {code}"


def log_reason(lines: Iterable[str], limit: int = REASON_LIMIT) -> str:
    """One line for a failed build or pip run, from its log's lines (the tail is enough): the
    decisive lines only (error lines, the packages pip names, the Dockerfile's wrong-wheel
    check, the failed step's exit code without its script), in log order, without ANSI
    escapes, and a hint when a KNOWN failure shows anywhere in the log. When no line is
    decisive, the log's last output line stands in; '' for an empty log. At most ``limit``
    characters."""
    plain = _plain(lines)
    return _with_hint(_decisive(plain), hint("\n".join(plain)), limit)


def output_reason(head: str, lines: Iterable[str], limit: int = REASON_LIMIT) -> str:
    """``head`` (what became of a case), and when its child processes (DataLoader workers)
    printed anything on stderr meanwhile, their decisive lines and a hint, as one line of at
    most ``limit`` characters. The children ran on this machine, so the shm hint gets this
    /dev/shm's size, as ``exception_reason``'s does."""
    plain = _plain(lines)
    if not plain:
        return clean(head, limit)
    known = recognise("\n".join(plain))
    found = _advice_here(known)
    return _with_hint(f"{head}; its child processes printed: {_decisive(plain)}", found, limit)


# apt prints its progress ("Reading package lists... ", "... 50%", "... Done") on stdout and
# ends the line only once done; its error ("E: Version ... was not found") goes to stderr, and
# the engine may stream it onto that same line, after the dots, a percentage or "Done"
# ("Reading package lists... DoneE: Version ..."): two lines, as they were printed. apt's
# markers are followed by a capital; one after a capital is part of a word ("FILE: X").
_AFTER_PROGRESS = re.compile(r"(?<=[^A-Z\s])\s*(?=(?:E|W|Err): [A-Z])|(?<=\.\.\.)\s*(?=ERROR: )")


def _plain(lines: Iterable[str]) -> list[str]:
    """The non-blank lines, without ANSI escapes or control characters."""
    plain = [_unquoted(_strip(x).rstrip()) for x in lines]
    split = [part for x in plain for part in _AFTER_PROGRESS.split(x)]
    return [x for x in split if x.strip()]


def _decisive(plain: Sequence[str]) -> str:
    """The lines of a log that say what went wrong, joined with '; ' (see ``log_reason``)."""
    picked: list[str] = []
    ended = ""
    for i, line in enumerate(plain):
        if line.startswith(_EXITED):
            ended = _docker_exit(plain, i, line[len(_EXITED) :])
        elif _HASHES.search(line):
            picked.append(_hash_mismatch(plain, i))
        elif _DECISIVE.search(line):
            text = line.strip()
            wrong = text.find("wrong wheel: ")
            picked.append(_short_versions(text[wrong:] if wrong > 0 else text))
    picked = list(dict.fromkeys(picked))  # pip repeats itself; once each
    if not picked:
        output = [x for x in plain if not (_STEP.match(x) or x.startswith((_EXITED, " ---> ")))]
        picked = output[-1:] or list(plain[-1:])
    return "; ".join([*picked, ended] if ended else picked)
