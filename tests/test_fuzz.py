"""Input fuzzing: no input a user can give ends in a traceback.

Property tests (hypothesis) over every parser of user input: the matrix file, --select, --set,
--env, the suite's whole argument set, a run folder's records.jsonl and results.parquet, and the
command line itself. Each either returns what it parsed or raises its ``CudastackError``
subclass with a one-line message, which ``cudastack``'s ``main`` prints as ``error: ...`` with
exit code 2, writing nothing.

Every property states its example count in its ``@settings``; the examples are derandomized and
no example database is written, so each run tries the same inputs. A failing input a property
once found stays as its ``@example``.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import re
import signal
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from cudastack.contract.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, CudastackError
from cudastack.contract.schema import COLUMNS, SAMPLES, SCHEMA_VERSION
from cudastack.environment import suite
from cudastack.host.analysis import results
from cudastack.host.cells import matrix, reproduce
from cudastack.host.cli.main import main
from cudastack.host.run.suite_args import SuiteArgs, parse_env

# Reproducible everywhere: the same examples on every run, nothing written into the repository
# (hypothesis keeps its caches, and the patches of failing examples it writes, in a temporary
# folder instead of .hypothesis/).
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "cudastack-hypothesis")
# The examples of a test share its tmp_path, each writing its files anew: the
# function-scoped-fixture health check warns of sharing a fixture between examples.
FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def assert_one_line(exc: BaseException, kind: type = CudastackError) -> None:
    """``exc`` is the ``kind`` of error main() turns into one ``error: ...`` line."""
    assert isinstance(exc, kind), repr(exc)
    message = str(exc)
    assert message and message.splitlines() == [message], repr(message)


@contextlib.contextmanager
def refused(kind: type = CudastackError) -> Iterator[None]:
    """Let the body return, or raise ``kind`` with a one-line message; anything else fails."""
    try:
        yield
    except AssertionError:  # the body's own checks
        raise
    except Exception as exc:  # the type is the assertion
        assert_one_line(exc, kind)


# Text as users type it: any character a file or an argument can hold (no surrogates, which no
# UTF-8 file or Linux argument decodes to), biased towards the characters parsers split on.
SPLITTERS = "=,.:-_ \t\n\r'\"\\$;[]{}#@/\x00\u2028\x85é☃"
odd_text = st.text(st.characters(exclude_categories=["Cs"]) | st.sampled_from(SPLITTERS))
word = st.text(st.sampled_from("abcxyz019_-. ="), min_size=1, max_size=8)


# ----- the matrix file -------------------------------------------------------------------------

# A valid cell; the examples start from it, so that a change reaches the checks behind the first.
VALID_CELL = {
    "base_image": "nvidia/cuda:12.8.1-runtime-ubuntu24.04",
    "cuda": "12.8",
    "cudnn": "9.10.2.21",
    "torch": "2.9.1",
    "torchvision": "0.24.1",
    "index": "cu128",
    "python": "3.12",
    "packages": ["numpy==2.1.0", "peft[torch]>=0.21,<1"],
}


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string (JSON's escapes are TOML's; DEL must be escaped too)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_float(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return ("-inf" if value < 0 else "inf") if math.isinf(value) else repr(value)


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_string(key)


def toml(value: Any) -> str:
    """A Python string, list or dict of them as a TOML value."""
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(toml, value)) + "]"
    return inline_table({k: toml(v) for k, v in value.items()})


def inline_table(fields: dict[str, str]) -> str:
    return "{" + ", ".join(f"{toml_key(k)} = {v}" for k, v in fields.items()) + "}"


# Every TOML type, a field of the wrong one included: dates and times are values too.
toml_scalars = st.one_of(
    odd_text.map(toml_string),
    st.integers().map(str),
    st.floats().map(toml_float),
    st.sampled_from(["true", "false", "1979-05-27", "07:32:00", "1979-05-27T07:32:00Z"]),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
        st.dictionaries(word, inner, max_size=3).map(inline_table),
    ),
    max_leaves=6,
)
# Versions almost right: another major, a leading zero, a fourth part, a space, a suffix.
versions = st.one_of(
    st.from_regex(r"[0-9]{1,2}(\.[0-9]{1,3}){0,3}", fullmatch=True),
    st.from_regex(r"cu[0-9]{1,4}|cpu|rocm6\.2", fullmatch=True),
    st.sampled_from(["2.09.1", "02.9.1", "2.9.1 ", "2.9.1\n", "2.9", "2.9.1rc1", "2.99999.1"]),
    st.sampled_from(["12.8.1", "9.1", "3.12.1", "3", "0.24", "0.1.1", "2.0.0", "12.80"]),
)
# Names of cells and fields: the real ones, near ones, any text.
names = st.one_of(
    st.sampled_from(matrix.KEYS),
    st.from_regex(r"[a-z0-9][a-z0-9._-]{0,12}", fullmatch=True),
    odd_text,
)
# The field a change makes: mostly a real one, so that the change reaches the checks behind it.
fields = st.sampled_from(matrix.KEYS) | st.sampled_from(matrix.KEYS) | names


@st.composite
def changed_cell(draw: st.DrawFn) -> dict[str, str]:
    """The valid cell as TOML fields, with a few fields dropped or given odd values."""
    cell = {key: toml(value) for key, value in VALID_CELL.items()}
    if draw(st.booleans()):
        cell["name"] = toml_string(draw(names))
    for _ in range(draw(st.integers(0, 3))):
        key = draw(fields)
        change = draw(st.sampled_from(["drop", "version", "text", "value", "packages"]))
        if change == "drop":
            cell.pop(key, None)
        elif change == "version":
            cell[key] = toml_string(draw(versions))
        elif change == "text":
            cell[key] = toml_string(draw(odd_text))
        elif change == "packages":
            cell["packages"] = toml(draw(st.lists(odd_text | versions, max_size=3)))
        else:
            cell[key] = draw(toml_values)
    return cell


def table_lines(header: str, fields: dict[str, str]) -> str:
    return header + "\n" + "".join(f"{toml_key(k)} = {v}\n" for k, v in fields.items())


@st.composite
def matrix_texts(draw: st.DrawFn) -> str:
    """A matrix file that is valid TOML: [defaults] and [[cell]] tables, or in their place a
    value of another type (`cell = 3`, `defaults = []`), and other top-level keys."""
    odd = draw(st.sampled_from(["", "", "", "cell", "defaults", "other"]))
    parts = [f"{toml_key(draw(names) if odd == 'other' else odd)} = {draw(toml_values)}\n"]
    if odd != "defaults" and draw(st.booleans()):
        defaults = draw(
            st.dictionaries(fields, toml_values | versions.map(toml_string), max_size=2)
        )
        parts.append(table_lines("[defaults]", defaults))
    for _ in range(draw(st.integers(0 if odd == "cell" else 1, 3)) if odd != "cell" else 0):
        parts.append(table_lines("[[cell]]", draw(changed_cell())))
    return "\n".join(parts[0 if odd else 1 :])


def valid_matrix_text(*cell_names: str) -> str:
    return "\n".join(
        table_lines("[[cell]]", {"name": toml(n), **{k: toml(v) for k, v in VALID_CELL.items()}})
        for n in cell_names
    )


# What must never reach a Dockerfile ARG, which its RUN lines expand: the matrix's guard against
# injected commands (quotes, expansions, command separators, line breaks).
SHELL_CHARACTERS = set("\t\n\r\x00'\"$;`\\|&(){}")


def assert_safe_cells(cells: list) -> None:
    assert len({c.name for c in cells}) == len(cells)
    for cell in cells:
        for key, value in cell.build_args().items():
            assert isinstance(value, str) and not set(value) & SHELL_CHARACTERS, (key, value)
            # Requirements are joined by spaces; no other value has one.
            assert key == "EXTRA_PACKAGES" or " " not in value, (key, value)


def load_text(folder: Path, data: str | bytes, variants: bool = True) -> list:
    path = folder / "matrix.toml"
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return matrix.load(path, variants=variants)


@settings(FUZZ, max_examples=300)
@given(text=matrix_texts(), variants=st.booleans())
@example(text=valid_matrix_text("a", "b"), variants=True)
def test_a_matrix_of_valid_toml_loads_as_safe_cells_or_one_line(
    tmp_path: Path, text: str, variants: bool
) -> None:
    with refused(matrix.MatrixError):
        assert_safe_cells(load_text(tmp_path, text, variants))


def mangled(text: str, edits: list[tuple[int, int, str]]) -> str:
    """``text`` with each (at, length, insert) edit applied: a character range replaced."""
    chars = list(text)
    for at, length, insert in edits:
        at %= max(len(chars), 1)
        chars[at : at + length] = insert
    return "".join(chars)


edits = st.lists(
    st.tuples(st.integers(0, 10_000), st.integers(0, 3), st.sampled_from([*"[]{}=\"'\n#.,", ""])),
    min_size=1,
    max_size=4,
)


@settings(FUZZ, max_examples=200)
@given(
    data=st.one_of(
        st.binary(max_size=200),
        odd_text,
        st.builds(mangled, st.just(valid_matrix_text("a", "b")), edits),
        st.builds(
            lambda t, n: t.encode()[:n], st.just(valid_matrix_text("a")), st.integers(0, 400)
        ),
    )
)
def test_any_file_is_a_matrix_or_one_line(tmp_path: Path, data: str | bytes) -> None:
    with refused(matrix.MatrixError):
        assert_safe_cells(load_text(tmp_path, data))


@settings(FUZZ, max_examples=100)
@given(wanted=st.lists(st.sampled_from(["a", "b.1", "c-2"]) | names | st.just(""), max_size=4))
def test_selecting_cells_gives_those_named_or_one_line(tmp_path: Path, wanted: list[str]) -> None:
    cells = load_text(tmp_path, valid_matrix_text("a", "b.1", "c-2"))
    with refused(matrix.MatrixError):
        chosen = matrix.select(cells, wanted)
        assert [c.name for c in chosen] == [c.name for c in cells if not wanted or c.name in wanted]


# ----- --select, --set, --env and the suite's arguments ------------------------------------------

SPECS = suite.discover(suite.DEFAULT_BENCH_DIR)
PARAMS = sorted({key for spec in SPECS.values() for key in spec.grid("smoke")})
LISTED = sorted(
    {
        suite.format_value(value)
        for spec in SPECS.values()
        for grid in (spec.params, *spec.profiles.values())
        for values in grid.values()
        for value in values
    }
)
# Each parameter's listed values, as --select matches them.
LISTED_BY_KEY = {
    key: sorted(
        {
            suite.format_value(value)
            for spec in SPECS.values()
            for grid in (spec.params, *spec.profiles.values())
            for value in grid.get(key, [])
        }
    )
    for key in PARAMS
}


def mostly(good: st.SearchStrategy, *odd: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` three times in four, else one of ``odd``: most examples get past the first
    check, to the ones behind it."""
    return st.one_of(good, good, good, st.one_of(*odd))


def listed(key: str, most: int) -> st.SearchStrategy[str]:
    """key=value[,value] with values ``key`` lists, up to ``most`` of them."""
    chosen = st.lists(st.sampled_from(LISTED_BY_KEY[key]), min_size=1, max_size=most)
    return chosen.map(lambda vs: f"{key}={','.join(vs)}")


keys = st.sampled_from(PARAMS) | word | odd_text
values = st.sampled_from(LISTED) | st.integers(-5, 10**6).map(str) | versions | odd_text
# Items odd in every way: any key and values, spaces around them, no '=', nothing around it.
odd_items = st.one_of(
    st.builds(lambda k, vs: f"{k}={','.join(vs)}", keys, st.lists(values, min_size=1, max_size=3)),
    st.builds(lambda k, v: f" {k} = {v} ", keys, values),
    odd_text,
    st.sampled_from(["", "=", "==", "dtype=", "=bf16", ",", "dtype=,", "dtype=bf16,"]),
)
select_items = mostly(st.sampled_from(PARAMS).flatmap(lambda key: listed(key, 2)), odd_items)
set_items = mostly(
    st.sampled_from(PARAMS).flatmap(lambda key: listed(key, 1)),
    st.builds("{}={}".format, st.sampled_from(PARAMS), st.integers(-5, 10**6)),
    odd_items,
)
variable_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True)
env_items = mostly(
    st.builds("{}={}".format, variable_names, st.sampled_from(["INFO", "1", "", "a=b"])),
    st.builds("{}={}".format, variable_names, odd_text),
    st.builds("{}={}".format, odd_text, odd_text),
    odd_text,
)
bench_names = st.lists(mostly(st.sampled_from(sorted(SPECS)), word, odd_text), max_size=3)
profiles = st.sampled_from(sorted(suite.PROFILES))


@settings(FUZZ, max_examples=300)
@given(selection=st.lists(select_items | odd_items, max_size=4))
def test_select_parses_or_is_one_line(selection: list[str]) -> None:
    with refused(suite.SuiteError):
        parsed = suite.parse_select(selection)
        assert all(k and k == k.strip() for k in parsed)


@settings(FUZZ, max_examples=300)
@given(
    overrides=st.lists(set_items, max_size=2),
    selection=st.lists(select_items, max_size=2),
    benches=bench_names,
    profile=profiles,
    data_parallel=st.booleans(),
)
def test_set_select_and_plan_give_cases_or_one_line(
    overrides: list[str],
    selection: list[str],
    benches: list[str],
    profile: str,
    data_parallel: bool,
) -> None:
    with refused(suite.SuiteError):
        parsed = suite.parse_set(overrides, SPECS)
        chosen = suite.parse_select(selection)
        cases = suite.plan(SPECS, profile, benches, chosen, parsed, data_parallel)
        for case in cases:
            assert not benches or case.bench in benches
            for key, wanted in chosen.items():
                assert suite.format_value(case.params[key]) in wanted


@settings(FUZZ, max_examples=300)
@given(env=st.lists(env_items, max_size=4))
@example(env=["A=x\x00y"])  # no process environment holds a NUL: the cell failed to start
def test_env_parses_to_variable_names_or_one_line(env: list[str]) -> None:
    with refused(suite.SuiteError):
        parsed = parse_env(env)
        assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) for key in parsed)
        assert all("\x00" not in value for value in parsed.values())  # no process takes one


@st.composite
def suite_args(draw: st.DrawFn) -> SuiteArgs:
    """The suite's arguments as a command line gives them: valid ones, with up to two of them
    odd (so that an example gets past the first check to the ones behind it)."""
    listed_select = st.sampled_from(PARAMS).flatmap(lambda key: listed(key, 2))
    listed_set = st.sampled_from(PARAMS).flatmap(lambda key: listed(key, 1))
    valid: dict[str, st.SearchStrategy[Any]] = {
        "benches": st.lists(st.sampled_from(sorted(SPECS)), max_size=2),
        "select": st.lists(listed_select, max_size=2),
        "overrides": st.lists(listed_set, max_size=2),
        "profile": profiles | st.just("auto"),
        "device": st.sampled_from(["auto", "cpu", "cuda", "cuda:0"]),
        "nproc": st.just(1),
        "repeat": st.integers(1, 3),
        "env": st.lists(st.sampled_from(["NCCL_DEBUG=INFO", "A=", "B=a=b"]), max_size=2),
    }
    odd: dict[str, st.SearchStrategy[Any]] = {
        "benches": bench_names,
        "select": st.lists(odd_items, min_size=1, max_size=2),
        "overrides": st.lists(odd_items | set_items, min_size=1, max_size=2),
        "profile": word | odd_text,
        "device": word | odd_text,
        "nproc": st.integers(-2, 3),
        "repeat": st.integers(-2, 3),
        "env": st.lists(env_items, min_size=1, max_size=2),
    }
    changed = draw(st.lists(st.sampled_from(sorted(odd)), max_size=2, unique=True))
    chosen: dict[str, Any] = {k: draw(odd[k] if k in changed else v) for k, v in valid.items()}
    return SuiteArgs(**chosen)


@settings(FUZZ, max_examples=200)
@given(args=suite_args())
@example(args=SuiteArgs(overrides=["weights=a\nb"]))
def test_the_suite_arguments_validate_or_are_one_line(args: SuiteArgs) -> None:
    with refused(suite.SuiteError):
        assert args.validate() >= 0


# ----- a run folder's files ----------------------------------------------------------------------


def record(**changes: Any) -> dict:
    """A row as a worker of schema 4 wrote it, a line a sample (rep, value)."""
    base = {
        "schema_version": SCHEMA_VERSION,
        "run_id": "r1",
        "cell": "local",
        "bench": "gemm",
        "kind": "kernel",
        "headline": "tflops",
        "case": "gemm[n=1]",
        "params": json.dumps({"n": 1}),
        "metric": "tflops",
        "unit": "TFLOP/s",
        "better": "higher",
        "rep": 0,
        "process": 0,
        "value": 1.5,
        "status": "ok",
        "reason": "",
        "device": "cpu",
        "pid": 42,  # not a column: the reader drops it
    }
    return {**base, **changes}


def samples_line(values: list[Any], **changes: Any) -> dict:
    """A line as a worker writes it now: a metric's samples in one list."""
    line = {k: v for k, v in record(**changes).items() if k not in ("rep", "value")}
    return {**line, SAMPLES: values}


WORKER_RECORDS = [
    record(rep=0),
    record(rep=1, value=1.25),
    samples_line([2.5, None, 3], metric="latency", unit="ms", better="lower"),
    samples_line([None], case="gemm[n=2]", status="skipped", reason="not on this device"),
    results.harness_row("r1", "local", "run", "failed", "the worker died"),
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(st.characters()),  # lone surrogates too: json.dumps escapes them
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=5,
)


@st.composite
def records_files(draw: st.DrawFn) -> bytes:
    """A records.jsonl as a worker writes it, then damaged: values of other types, foreign JSON
    lines, raw unicode, random bytes spliced in, and cut at any byte."""
    rows = [dict(r) for r in WORKER_RECORDS[: draw(st.integers(0, len(WORKER_RECORDS)))]]
    for row in rows:
        for key in draw(st.lists(st.sampled_from([*COLUMNS, "pid", "extra", SAMPLES]), max_size=2)):
            row[key] = draw(json_values)
    lines = [json.dumps(row, ensure_ascii=draw(st.booleans())) for row in rows]
    for _ in range(draw(st.integers(0, 2))):  # a line that is JSON but no record
        lines.insert(draw(st.integers(0, len(lines))), json.dumps(draw(json_values)))
    data = "".join(line + "\n" for line in lines).encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=8)) + data[at:]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return data


ONE_TORN = (json.dumps(record()) + "\n" + json.dumps(record(reason="é"))).encode()


@settings(FUZZ, max_examples=300)
@given(data=mostly(records_files(), st.binary(max_size=300)))
# Each found a traceback once (its exception in the comment), but the first.
@example(data=b'null\n{"rep": 1}\n')  # pyarrow crashed the process on a first line of null
@example(data=b"\xff\n")  # UnicodeDecodeError: no UTF-8
@example(data=ONE_TORN[:-3])  # UnicodeDecodeError: cut inside a two-byte character
@example(data=b'{"schema_version": "4"}\n')  # TypeError: str > int
@example(data=b'{"schema_version": 4}\n{"schema_version": "x"}\n')  # TypeError: str > int
@example(data=b'{"rep": 1}\n3\n')  # TypeError: a line of JSON that is no object
@example(data=b'{"reason": "\\ud800"}\n')  # UnicodeEncodeError: parquet stores no surrogate
@example(data=b'{"rep": Infinity}\n')  # IntCastingNaNError
def test_records_read_as_a_storable_table_or_one_line(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / results.RECORDS
    path.write_bytes(data)
    with refused(results.ResultsError):
        df = results.read_records(path)
        assert list(df.columns) == list(COLUMNS)
        assert df.dtypes.equals(results.to_frame([]).dtypes)
        # What a run does with it next: store it, and read it back unchanged.
        results.write_tables(df, tmp_path)
        pd.testing.assert_frame_equal(results.load_table(tmp_path), df)


def test_a_number_an_int_column_cannot_hold_reads_as_0(tmp_path: Path) -> None:
    """As a missing or null int does; a cast would make 1e300 -2**63."""
    path = tmp_path / results.RECORDS
    path.write_text(
        '{"rep": 1e300}\n{"rep": -Infinity}\n{"rep": 9223372036854775808}\n{"rep": 3}\n'
    )
    assert results.read_records(path)["rep"].tolist() == [0, 0, 0, 3]


def table_columns() -> st.SearchStrategy[list]:
    """Values for one column of a table: one type each (as a parquet column holds)."""
    n = len(WORKER_RECORDS)
    return st.one_of(
        st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n),
        st.lists(st.floats(), min_size=n, max_size=n),
        st.lists(st.text(), min_size=n, max_size=n),
        st.lists(st.booleans(), min_size=n, max_size=n),
        st.lists(st.none() | st.integers(0, 9), min_size=n, max_size=n),
        st.lists(st.lists(st.integers(0, 9), max_size=2), min_size=n, max_size=n),
        st.lists(st.dictionaries(word, st.integers(0, 9), max_size=2), min_size=n, max_size=n),
        st.lists(st.datetimes(), min_size=n, max_size=n),
        st.just([None] * n),
    )


@st.composite
def parquet_tables(draw: st.DrawFn) -> pd.DataFrame:
    """A results table of this schema, another version's, or with columns missing, added or of
    another type."""
    df = results.to_frame(WORKER_RECORDS)
    dropped = draw(st.lists(st.sampled_from(list(COLUMNS)), max_size=4, unique=True))
    df = df.drop(columns=dropped)
    for column in draw(st.lists(st.sampled_from(list(COLUMNS)) | word, max_size=3, unique=True)):
        df[column] = draw(table_columns())
    if draw(st.booleans()):
        df = df.iloc[: draw(st.integers(0, len(df)))]
    return df


@settings(FUZZ, max_examples=150)
@given(table=parquet_tables(), cut=st.none() | st.integers(0, 3000))
@example(table=pd.DataFrame({"schema_version": ["x", "4"]}), cut=None)
@example(table=results.to_frame(WORKER_RECORDS), cut=100)
def test_a_stored_table_loads_or_is_one_line(
    tmp_path: Path, table: pd.DataFrame, cut: int | None
) -> None:
    try:
        table.to_parquet(tmp_path / results.TABLE, index=False)
    except Exception:  # pyarrow cannot store this column: no such file exists
        assume(False)
    if cut is not None:  # a file cut short, or bytes that are no parquet at all
        path = tmp_path / results.TABLE
        path.write_bytes(path.read_bytes()[:cut])
    with refused(results.ResultsError):
        df = results.load_table(tmp_path)
        assert list(df.columns) == list(COLUMNS)
        results.case_table(df)  # what `show` makes of it


# ----- the command line -------------------------------------------------------------------------

# A bench that measures nothing heavy, with a parameter of each type for --set and --select.
TINY_BENCH = '''
"""Nothing heavy: three samples of one millisecond."""

KIND = "kernel"
HEADLINE = "latency"
PARAMS = {"n": [1, 2], "mode": ["a", "b"], "flag": [True]}


def run(ctx, n, mode, flag):
    from cudastack.environment.context import Metric

    return [Metric("latency", "ms", "lower", [1.0, 1.0, 1.0])]
'''


def command_line(argv: list[str]) -> tuple[int, str]:
    """Exit code and output (stdout, then stderr) of ``cudastack ARGV`` through the real entry
    point, main(), in this process; main()'s SIGTERM handler is put back afterwards."""
    out, err = io.StringIO(), io.StringIO()
    handler = signal.getsignal(signal.SIGTERM)
    saved = sys.argv
    sys.argv = ["cudastack", *argv]
    code: Any = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = saved
        signal.signal(signal.SIGTERM, handler)
    code = 0 if code is None else code
    text = out.getvalue() + err.getvalue()
    # What the examples reached, for pytest --hypothesis-show-statistics.
    event(f"exit {code}: {err.getvalue()[:30]}")
    assert "Traceback" not in text, text
    assert code in (EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT), (code, text)
    if code == EXIT_BAD_INPUT:
        lines = err.getvalue().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err.getvalue()
    return code, text


# Argument text as a shell passes it: no NUL byte (an argument cannot hold one).
arg_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)


def option_values(name: str, values: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    """``--name=VALUE`` for zero to two values (the = form: a value may start with '-')."""
    return st.lists(values.map(lambda v: f"--{name}={v}"), max_size=2)


run_options = st.tuples(
    option_values("repeat", st.integers(-1, 2).map(str) | arg_text),
    option_values("nproc", st.integers(-1, 3).map(str) | arg_text),
    option_values("timeout", st.sampled_from(["0", "-1", "nan", "600", "1e-9", "inf"])),
    option_values("select", st.sampled_from(["n=1", "mode=a,b", "flag=true", "n=3"]) | arg_text),
    option_values(
        "set", st.sampled_from(["n=2", "mode=b", "flag=no", "n=x", "dtype=bf16"]) | arg_text
    ),
    option_values("env", st.sampled_from(["A=1", "1A=x", "NCCL_DEBUG=INFO"]) | arg_text),
    option_values("profile", st.sampled_from(["smoke", "auto", "fast"]) | arg_text),
    option_values("bench", st.sampled_from(["tiny", "gemm", "tiny,tiny"]) | arg_text),
).map(lambda groups: list(itertools.chain.from_iterable(groups)))


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bench")
    (folder / "tiny.py").write_text(textwrap.dedent(TINY_BENCH))
    return folder


RUNS = itertools.count()


@settings(FUZZ, max_examples=8)
@given(options=run_options)
@example(options=["--repeat=0"])
@example(options=["--repeat=abc"])
@example(options=["--bogus"])
def test_run_exits_0_1_or_2_with_one_line_and_nothing_written(
    bench_dir: Path, tmp_path: Path, options: list[str]
) -> None:
    out = tmp_path / f"run-{next(RUNS)}"
    argv = ["run", "--bench-dir", str(bench_dir), "--out", str(out), "--profile=smoke", *options]
    code, text = command_line(argv)
    if code == EXIT_BAD_INPUT:
        assert not out.exists(), text


# Sizes Docker takes for /dev/shm, as its parse_bytes reads them; the examples are all others.
SHM_SIZE = re.compile(r"(\d+(?:\.\d+)?)([bkmg]b?)?")


def bad_shm_size(size: str) -> bool:
    match = SHM_SIZE.fullmatch(size.strip().lower())
    return match is None or float(match[1]) <= 0


@settings(FUZZ, max_examples=4)
@given(size=st.sampled_from(["", "0", "-1g", "16x", "1.5.g", "16 g"]) | arg_text)
def test_a_bad_shm_size_is_refused_before_a_cell_runs(
    bench_dir: Path, tmp_path: Path, size: str
) -> None:
    assume(bad_shm_size(size))  # a good one would build the cell's image
    path = tmp_path / "matrix.toml"
    path.write_text(valid_matrix_text("c1"))
    out = tmp_path / f"run-{next(RUNS)}"
    argv = ["run", "--cell", "c1", "--matrix", str(path), "--bench-dir", str(bench_dir)]
    code, text = command_line([*argv, "--out", str(out), f"--shm-size={size}"])
    assert code == EXIT_BAD_INPUT and not out.exists(), text


def run_folder(folder: Path, table: pd.DataFrame) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    table.to_parquet(folder / results.TABLE, index=False)
    return folder


@settings(FUZZ, max_examples=10)
@given(
    command=st.sampled_from(["list", "show", "check"]),
    matrix_text=matrix_texts(),
    table=parquet_tables(),
    profile=st.sampled_from(["quick", "auto", "huge"]) | arg_text,
)
def test_list_show_and_check_exit_0_1_or_2_with_one_line(
    bench_dir: Path,
    tmp_path: Path,
    command: str,
    matrix_text: str,
    table: pd.DataFrame,
    profile: str,
) -> None:
    path = tmp_path / "matrix.toml"
    path.write_text(matrix_text)
    empty = tmp_path / "wheels"
    empty.mkdir(exist_ok=True)
    try:
        damaged = run_folder(tmp_path / "damaged", table)
    except Exception:  # pyarrow cannot store this column
        assume(False)
    argv = {
        "list": ["list", f"--profile={profile}", "--bench-dir", str(bench_dir)],
        "show": ["show", str(damaged)],
        # An empty wheelhouse: a valid matrix resolves against it, offline, and fails (exit 1).
        "check": ["check", "--wheelhouse", str(empty)],
    }[command]
    command_line([*argv, "--matrix", str(path)] if command != "show" else argv)


BROKEN_ENV = b'{"torch": '


@settings(FUZZ, max_examples=8)
@given(
    runs=st.sampled_from([["good", "damaged"], ["damaged", "good", "good"]])
    | st.lists(st.sampled_from(["good", "damaged", "r1"]) | arg_text, min_size=1, max_size=3),
    table=parquet_tables(),
    env_json=st.none() | st.just(b"{}"),
    fmt=st.sampled_from(["table", "md", "csv", "json", "xml"]),
    threshold=st.sampled_from(["0.05", "0.2", "-1", "nan"]),
    bench=st.sampled_from(["", "gemm", "harness", "nope"]) | arg_text,
)
@example(
    runs=["good", "damaged"],
    table=results.to_frame(WORKER_RECORDS),
    env_json=BROKEN_ENV,
    fmt="table",
    threshold="0.05",
    bench="",
)
@example(
    runs=["good", "a\nb"],
    table=results.to_frame(WORKER_RECORDS),
    env_json=None,
    fmt="table",
    threshold="0.05",
    bench="",
)
@example(
    runs=["good", "damaged"],
    table=results.to_frame(WORKER_RECORDS),
    env_json=None,
    fmt="table",
    threshold="0.05",
    bench="a\nb",
)
def test_compare_exits_0_1_or_2_with_one_line(
    tmp_path: Path,
    runs: list[str],
    table: pd.DataFrame,
    env_json: bytes | None,
    fmt: str,
    threshold: str,
    bench: str,
) -> None:
    try:
        damaged = run_folder(tmp_path / "damaged", table)
    except Exception:  # pyarrow cannot store this column
        assume(False)
    run_folder(tmp_path / "good", results.to_frame(WORKER_RECORDS).assign(run_id="r2"))
    env = damaged / "local" / "env.json"  # its cell's (the folder is the examples' to share)
    env.unlink(missing_ok=True)
    if env_json is not None:
        env.parent.mkdir(exist_ok=True)
        env.write_bytes(env_json)
    options = [f"--format={fmt}", f"--threshold={threshold}", f"--bench={bench}"]
    command_line(["compare", *runs, "--results-dir", str(tmp_path), *options])


@settings(FUZZ, max_examples=40)
@given(
    cell=st.sampled_from(["c1", "c2", "", "C1", "c1;id"]) | arg_text,
    shm=st.sampled_from(["16g", "0", "1x"]) | arg_text,
    env=st.lists(st.sampled_from(["A=1", "1A=x", "B"]) | arg_text, max_size=2),
    gpus=st.sampled_from(["all", "none", "0,1", "x"]) | arg_text,
    command=st.lists(arg_text, max_size=3),
)
def test_shell_exits_2_with_one_line_before_any_container(
    tmp_path: Path, cell: str, shm: str, env: list[str], gpus: str, command: list[str]
) -> None:
    # No image of this matrix's cell is ever built: every example ends before a container runs,
    # at a bad option, an unknown cell, a missing docker command or engine, or the missing image.
    path = tmp_path / "matrix.toml"
    path.write_text(valid_matrix_text("c1"))
    options = [f"--shm-size={shm}", f"--gpus={gpus}", *(f"--env={e}" for e in env)]
    code, text = command_line(["shell", cell, "--matrix", str(path), *options, "--", *command])
    assert code == EXIT_BAD_INPUT, text


def recorded_cells() -> st.SearchStrategy[Any]:
    """A cell.json as record_inputs writes it, one of its fields changed, missing or foreign."""
    cell = st.fixed_dictionaries(
        {"name": st.sampled_from(["c1", "c2"]) | arg_text},
        optional={k: st.just(v) | arg_text | st.integers() for k, v in VALID_CELL.items()},
    )
    record = st.fixed_dictionaries(
        {},
        optional={
            "cell": cell | st.lists(arg_text) | arg_text,
            "tag": st.sampled_from(["cudastack/c1:0123abcd"]) | arg_text | st.none(),
            "dockerfile": st.just("FROM scratch\n") | st.integers(),
            "lock": st.just("") | st.none(),
        },
    )
    return record | st.lists(st.integers()) | arg_text


@settings(FUZZ, max_examples=150)
@given(
    record=mostly(recorded_cells().map(json.dumps), st.binary(max_size=60)),
    env_json=st.none() | st.just("{}") | st.just("[1]") | st.just(BROKEN_ENV.decode()),
    wanted=st.sampled_from(["zz", "c1,zz"]) | arg_text,
)
@example(record=json.dumps({"cell": {"name": "c1", "torch": "$(id)"}}), env_json=None, wanted="c1")
def test_reproduce_of_a_damaged_run_folder_is_one_line(
    tmp_path: Path, record: str | bytes, env_json: str | None, wanted: str
) -> None:
    # A cell that exists in a valid record is never asked for (--cell names others): every
    # example ends before the engine, at the damaged record or the unknown cell.
    cell_dir = tmp_path / "run" / "c1"
    cell_dir.mkdir(parents=True, exist_ok=True)
    data = record.encode() if isinstance(record, str) else record
    (cell_dir / "cell.json").write_bytes(data)
    (cell_dir / "env.json").unlink(missing_ok=True)
    if env_json is not None:
        (cell_dir / "env.json").write_text(env_json)
    try:
        valid = reproduce.checked_record(json.loads(data), "cell.json")
    except (CudastackError, ValueError):
        valid = None  # damaged: any --cell is fine
    if valid is not None:
        assume(valid["cell"]["name"] not in wanted.split(","))
    code, text = command_line(["reproduce", str(tmp_path / "run"), f"--cell={wanted}"])
    assert code == EXIT_BAD_INPUT, text
