"""What one worker process is asked to run: the worker's command line, written once.

Standard library only, and Python 3.9+: both sides use it, the host to write the command line
(``SuiteRequest.to_argv``) and the worker inside a cell to read it back (``from_argv``). Each
field declares its flag and help in its metadata, so adding a worker option is one field here;
the parser, the ``--help`` text and the host's command line all follow from it.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

PROG = "python -m cudastack.worker"

# How an option reads its values from the command line.
VALUE = "value"  # --flag V: one value, converted
NAMES = "names"  # --flag a,b: a comma-separated list, kept as a tuple of names
EACH = "each"  # --flag V --flag W: repeated, kept as a tuple in the order given
SWITCH = "switch"  # --flag: present or not


@dataclass(frozen=True)
class Option:
    """One worker option: its flag, help and form. ``hidden`` options are for the worker's own
    use and stay out of ``--help``."""

    flag: str
    help: str
    form: str = VALUE
    convert: Callable[[str], Any] = str
    hidden: bool = False

    @property
    def metavar(self) -> str:
        return self.flag.lstrip("-").upper().replace("-", "_")


def _meta(flag: str, help: str, **kw: Any) -> dict[str, Option]:
    """A field's metadata: its command-line option."""
    return {"option": Option(flag, help, **kw)}


def _names(text: str) -> tuple[str, ...]:
    return tuple(name for name in text.split(",") if name)


@dataclass(frozen=True)
class SuiteRequest:
    """What one worker process is asked to run (``python -m cudastack.worker ...``).

    Tuples may be given as any sequence; they are kept as tuples so that two requests compare
    equal field by field. Raises ValueError on a bench name that a comma list cannot carry.
    """

    out: Path = field(
        metadata=_meta("--out", "folder for records.jsonl and env.json", convert=Path)
    )
    cell: str = field(
        default="local", metadata=_meta("--cell", "the cell's name, recorded in every row")
    )
    run_id: str = field(
        default="", metadata=_meta("--run-id", "the run's id (default: a new one, by time)")
    )
    profile: str = field(
        default="auto", metadata=_meta("--profile", "auto | smoke | quick | standard | full")
    )
    # None: the suite shipped with the worker (the contract cannot name the worker's folder).
    bench_dir: Optional[Path] = field(
        default=None,
        metadata=_meta(
            "--bench-dir", "folder of bench files (default: the shipped suite)", convert=Path
        ),
    )
    device: str = field(default="auto", metadata=_meta("--device", "auto | cpu | cuda | cuda:N"))
    benches: tuple[str, ...] = field(
        default=(),
        metadata=_meta("--bench", "comma-separated bench names (default: all)", form=NAMES),
    )
    select: tuple[str, ...] = field(
        default=(), metadata=_meta("--select", "key=value[,value] filter", form=EACH)
    )
    threads: int = field(
        default=0,
        metadata=_meta("--threads", "CPU threads for torch (default: usable cores)", convert=int),
    )
    case_timeout: float = field(
        default=0.0,
        metadata=_meta(
            "--case-timeout",
            "seconds before a case is failed (default: the profile's)",
            convert=float,
        ),
    )
    extra_work: float = field(
        default=0.0,
        metadata=_meta(
            "--extra-work",
            "testing aid: make every timed call this fraction slower (CPU clocks)",
            convert=float,
        ),
    )
    overrides: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            "--set",
            "key=value: replace a parameter's values (e.g. batch=128, weights=DIR)",
            form=EACH,
        ),
    )
    trace: bool = field(
        default=False,
        metadata=_meta("--trace", "save a torch.profiler trace per case", form=SWITCH),
    )
    process: int = field(
        default=0,
        metadata=_meta(
            "--process",
            "index of this process among a cell's repeats; above 0 appends to --out's records",
            convert=int,
        ),
    )
    resume: bool = field(
        default=False,
        metadata=_meta(
            "--resume",
            "finish an interrupted attempt of this process: keep the cases --out's records "
            "hold for it (ok or skipped), run the rest",
            form=SWITCH,
        ),
    )
    image_digest: str = field(
        default="",
        metadata=_meta("--image-digest", "the cell image's digest, recorded in every row"),
    )
    # Set by the worker itself when a bench ISOLATEs a parameter: run only this process group.
    group: Optional[int] = field(
        default=None,
        metadata=_meta("--group", "the process group to run (0-based)", convert=int, hidden=True),
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if _option(f).form in (NAMES, EACH):  # lists from a caller compare as tuples
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        bad = [name for name in self.benches if not name or "," in name]
        if bad:
            raise ValueError(f"bench names {bad!r}: a name is non-empty and has no comma")

    def to_argv(self) -> list[str]:
        """The worker's arguments for this request: only the fields that differ from their
        default, in field order. A value starting with '-' is written as ``--flag=-value``, so
        that argparse does not take it for an option."""
        argv: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _required(f) and value == f.default:
                continue
            opt = _option(f)
            if opt.form == SWITCH:
                argv.append(opt.flag)
            elif opt.form == NAMES:
                argv += _pair(opt.flag, ",".join(value))
            elif opt.form == EACH:
                for item in value:
                    argv += _pair(opt.flag, str(item))
            else:
                argv += _pair(opt.flag, str(value))
        return argv

    @classmethod
    def from_argv(
        cls, argv: Optional[Sequence[str]] = None, description: Optional[str] = None
    ) -> SuiteRequest:
        """The request a worker command line asks for (``None``: ``sys.argv[1:]``). On bad
        input (an unknown option, a missing --out, a value of the wrong type) it prints the
        usage and exits with code 2, as argparse does."""
        ns = parser(description).parse_args(None if argv is None else list(argv))
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            value = getattr(ns, f.name)
            # A repeated option given no times is None (see ``parser``); __post_init__ makes
            # the lists tuples.
            values[f.name] = () if value is None and _option(f).form == EACH else value
        return cls(**values)


def parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    """The worker's argparse parser, one option per field of SuiteRequest."""
    p = argparse.ArgumentParser(prog=PROG, description=description)
    for f in dataclasses.fields(SuiteRequest):
        opt = _option(f)
        help = argparse.SUPPRESS if opt.hidden else opt.help
        if opt.form == SWITCH:
            p.add_argument(opt.flag, dest=f.name, action="store_true", help=help)
            continue
        kw: dict[str, Any] = {"dest": f.name, "metavar": opt.metavar, "help": help}
        if opt.form == EACH:
            # None, not (): argparse appends to a copy of the default, and a tuple has no append.
            kw.update(action="append", default=None)
        elif opt.form == NAMES:
            kw.update(type=_names, default=f.default)
        elif _required(f):
            kw.update(type=opt.convert, required=True)
        else:
            kw.update(type=opt.convert, default=f.default)
        p.add_argument(opt.flag, **kw)
    return p


def _option(f: dataclasses.Field[Any]) -> Option:
    option: Option = f.metadata["option"]
    return option


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING


def _pair(flag: str, value: str) -> list[str]:
    return [f"{flag}={value}"] if value.startswith("-") else [flag, value]
