"""`cudastack check`: real resolutions by uv against PyPI (or a wheelhouse), real command line."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest
from conftest import cli
from packaging.version import Version

from cudastack.host.cells import images, matrix

DEFAULTS = [p for p in matrix.load(matrix.DEFAULT_MATRIX)[-1].packages]  # the shared packages
JAMMY_118 = "nvidia/cuda:11.8.0-runtime-ubuntu22.04"
JAMMY_121 = "nvidia/cuda:12.1.1-runtime-ubuntu22.04"


def _matrix(folder: Path, body: str, packages: list = DEFAULTS) -> Path:
    path = folder / "matrix.toml"
    listed = ", ".join(f'"{p}"' for p in packages)
    path.write_text(f"[defaults]\npackages = [{listed}]\n" + textwrap.dedent(body))
    return path


def _cell(torch: str, vision: str, index: str, python: str, base: str, cuda: str) -> str:
    cuda_line = f'cuda = "{cuda}"' if cuda else ""
    return f"""
    [[cell]]
    base_image = "{base}"
    {cuda_line}
    torch = "{torch}"
    torchvision = "{vision}"
    index = "{index}"
    python = "{python}"
    """


def _check(*args: str, env: dict | None = None):
    """`cudastack check`, timed: a resolution needs PyPI, which only CI must provide."""
    started = time.perf_counter()
    proc = cli("check", *args, timeout=300, env=env)
    took = time.perf_counter() - started
    if "error: cannot reach" in proc.stderr and env is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must reach PyPI: {proc.stderr}")
        pytest.skip(proc.stderr.strip())
    print(f"cudastack check {' '.join(args)}: {took:.1f} s")
    return proc


def test_the_default_matrix_resolves():
    proc = _check()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cells = matrix.load(matrix.DEFAULT_MATRIX)
    lines = proc.stdout.splitlines()
    assert len(lines) == len(cells)
    for cell, line in zip(cells, lines):
        assert line.startswith(f"{cell.name}: resolves ("), line


def test_each_kind_of_conflict_is_named_with_the_cells_value(tmp_path):
    # One matrix, one run (each run costs an interpreter start and a resolution per cell).
    path = _matrix(
        tmp_path,
        # Python 3.10 with the default packages: transformers 5 declares Python >= 3.11.
        _cell("2.7.1", "0.22.1", "cu118", "3.10", JAMMY_118, "11.8")
        # torch 2.5.1 with transformers 5: the metadata resolves, only the rule can say no.
        + _cell("2.5.1", "0.20.1", "cu121", "3.11", JAMMY_121, "12.1")
        # A variant PyTorch did not publish.
        + _cell("2.9.1", "0.24.1", "cu118", "3.11", JAMMY_118, "11.8")
        # A dependency's requirement against the cell's own pin.
        + _cell("2.9.1", "0.24.1", "cpu", "3.12", "ubuntu:24.04", "")
        + 'packages = ["peft==0.21.2", "accelerate==0.20.0"]\n',
    )
    proc = _check("--matrix", str(path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines())
    assert len(lines) == 4 == len(proc.stdout.splitlines()), proc.stdout
    transformers = next(p for p in DEFAULTS if p.startswith("transformers=="))
    assert lines["cu11.8-torch2.7.1-py3.10"] == (
        f"{transformers} requires Python >=3.11.0; the cell has python 3.10"
    )
    rule = lines["cu12.1-torch2.5.1-py3.11"]
    assert rule.startswith(f"{transformers} needs torch >=2.6 at run time ")
    assert "(rule transformers5-needs-torch2.6, transformers/utils/import_utils.py)" in rule
    assert rule.endswith("the cell has torch 2.5.1")
    variant = lines["cu11.8-torch2.9.1-py3.11"]
    assert variant.startswith("torch 2.9.1 has no cu118 wheels (published: cpu, cu126, cu128, ")
    assert variant.endswith("the cell has index cu118")
    assert lines["cpu-torch2.9.1-py3.12"] == (
        "peft>=0.21.2 requires accelerate>=0.21.0; the cell has accelerate==0.20.0"
    )


def test_a_wheelhouse_is_the_only_source_asked(tmp_path):
    folder = tmp_path / "wheels"
    folder.mkdir()
    path = _matrix(tmp_path, _cell("2.9.1", "0.24.1", "cpu", "3.12", "ubuntu:24.04", ""), [])
    proc = _check("--matrix", str(path), "--wheelhouse", str(folder))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [
        f"cpu-torch2.9.1-py3.12: torch==2.9.1 is not in wheelhouse {folder}"
    ]


def test_an_unreachable_index_is_one_line_and_exit_1(tmp_path):
    # An empty cache and a proxy that refuses: uv cannot answer from a cache either.
    env = {
        **os.environ,
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "UV_CACHE_DIR": str(tmp_path / "cache"),
    }
    proc = _check("--cell", "cpu-torch2.9.1-py3.12", env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: cannot reach https://pypi.org/simple/")
    assert proc.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cell", "nope"], "error: unknown cell nope; cells: cu11.8-torch2.7.1-py3.11"),
        (["--matrix", "missing.toml"], "error: matrix file missing.toml does not exist"),
        (["--wheelhouse", "nowhere"], "error: --wheelhouse nowhere is not a folder"),
    ],
)
def test_bad_input_exits_2(tmp_path, args, message):
    proc = cli("check", *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr


def test_build_and_lock_refuse_a_cell_that_fails_the_check(tmp_path, engine):
    path = _matrix(tmp_path, _cell("2.7.1", "0.22.1", "cu118", "3.10", JAMMY_118, "11.8"))
    had_base = images.exists(engine, JAMMY_118)
    started = time.perf_counter()
    built = cli("build", "--matrix", str(path), timeout=300)
    print(f"build refused in {time.perf_counter() - started:.1f} s")
    if "error: cannot reach" in built.stderr + built.stdout:
        pytest.skip("PyPI cannot be reached")
    assert built.returncode == 1, built.stdout + built.stderr
    assert "build of cu11.8-torch2.7.1-py3.10 failed: check: transformers==" in built.stderr
    assert "requires Python >=3.11.0; the cell has python 3.10" in built.stderr
    assert images.exists(engine, JAMMY_118) == had_base  # nothing pulled, nothing built
    # doctor says what bench will do with that cell (run on the CPU, as --gpus none asks).
    doc = cli("doctor", "--matrix", str(path), "--gpus", "none", timeout=300)
    assert doc.returncode == 1, doc.stdout + doc.stderr
    said = " ".join(doc.stdout.split())
    assert "fail cu11.8-torch2.7.1-py3.10: check: transformers==" in said, said
    locked = cli("lock", "--matrix", str(path), timeout=300)
    assert locked.returncode == 2, locked.stdout + locked.stderr
    assert locked.stderr.startswith(
        "error: cell cu11.8-torch2.7.1-py3.10 fails `cudastack check`: transformers=="
    )
    assert not (tmp_path / "locks").exists()


def test_a_transformers_that_disabled_torch_is_a_skipped_row(tmp_path):
    # transformers reads torch's version from its distribution metadata: a metadata folder
    # saying 2.5.1 ahead on the path makes transformers 5 disable PyTorch, as in a torch 2.5 cell.
    fake = tmp_path / "meta" / "torch-2.5.1.dist-info"
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.5.1\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "meta")}
    proc = cli(
        "run", "--bench", "finetune", "--select", "model=bert", "--select", "mode=full",
        "--select", "layout=padded", "--profile", "quick", "--out", str(tmp_path / "run"),
        env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    words = " ".join(proc.stdout.split())  # the summary wraps a long reason
    assert "skipped 1 case: transformers 5." in words
    assert "does not run with torch" in words


def test_a_locked_cell_is_judged_by_its_locks_pins_without_asking_an_index(tmp_path, monkeypatch):
    from cudastack.host.cells import check

    cell = matrix.load(
        _matrix(tmp_path, _cell("2.5.1", "0.20.1", "cu121", "3.11", JAMMY_121, "12.1"))
    )[0]
    lock = tmp_path / "lock.txt"
    lock.write_text(
        "torch==2.5.1+cu121 \\\n    --hash=sha256:00\n"
        "transformers==5.24.0 \\\n    --hash=sha256:11\n"
    )

    def no_index(*args, **kwargs):
        raise AssertionError("a locked cell asked an index")

    monkeypatch.setattr(check, "resolve", no_index)
    found = check.check_cell(cell, lock=lock)
    assert found.source == "lock lock.txt"
    assert [p.split(" needs ")[0] for p in found.problems] == ["transformers==5.24.0"]
    lock.write_text("torch==2.5.1+cu121 \\\n    --hash=sha256:00\ntransformers==4.57.6\n")
    assert check.check_cell(cell, lock=lock).problems == ()


def _fake_wheel(folder: Path, name: str, version: str, requires: tuple = ()) -> None:
    """A wheel uv accepts from a folder: METADATA (with ``requires``), WHEEL and RECORD."""
    import zipfile

    dist = f"{name}-{version}.dist-info"
    needs = "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{needs}",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
        f"{dist}/RECORD": "",
    }
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)


def test_a_library_pin_is_checked_on_its_own_and_replaces_torchs(tmp_path):
    from cudastack.host.cells import check
    from cudastack.host.cells.matrix import Cell

    house = tmp_path / "wheelhouse"
    house.mkdir()
    _fake_wheel(house, "torch", "2.13.0", ("nvidia-cudnn-cu13==9.20.0.48",))
    _fake_wheel(house, "nvidia_cudnn_cu13", "9.20.0.48")
    # Its cuBLAS is not here: installed over torch's with --no-deps, the pin brings nothing.
    _fake_wheel(house, "nvidia_cudnn_cu13", "9.21.1.3", ("nvidia-cublas",))
    fields = {"base_image": "debian:bookworm", "torch": "2.13.0", "index": "cu130"}
    cell = Cell(name="c", python="3.11", cuda="13.0", cudnn="9.21.1.3", **fields)
    found = check.check_cell(cell, house)
    assert found.ok and not found.unreachable, found
    assert dict(found.resolved)["nvidia-cudnn-cu13"] == "9.21.1.3"  # the pin, not torch's
    missing = check.check_cell(
        Cell(name="d", python="3.11", cuda="13.0", cudnn="9.99.0.1", **fields), house
    )
    assert missing.problems == (
        f"nvidia-cudnn-cu13 has no version 9.99.0.1 in wheelhouse {house}; versions: "
        "9.21.1.3, 9.20.0.48 (the cell's cudnn)",
    )


def test_a_library_pin_pypi_lacks_is_named_with_the_versions_there(tmp_path):
    path = tmp_path / "matrix.toml"
    path.write_text(
        textwrap.dedent(
            """
            [[cell]]
            base_image = "nvidia/cuda:13.0.1-runtime-ubuntu24.04"
            cuda = "13.0"
            cudnn = "9.99.0.1"
            torch = "2.9.1"
            index = "cu130"
            python = "3.12"
            """
        )
    )
    proc = _check("--matrix", str(path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = proc.stdout.strip()
    assert line.startswith(
        "cu13.0-torch2.9.1-cudnn9.99.0.1-py3.12: nvidia-cudnn-cu13 has no version 9.99.0.1 "
        "on PyPI; versions: "
    ), line
    shown = line.split("versions: ")[1].removesuffix(" (the cell's cudnn)").split(", ")
    assert shown[-1] == "..." and len(shown) == 13, line  # the 12 newest releases
    releases = [Version(v) for v in shown[:-1]]
    assert releases == sorted(releases, reverse=True) and all(v.release[0] == 9 for v in releases)
    assert not any(v.is_prerelease for v in releases)


def test_a_lock_without_the_cells_library_pin_is_named(tmp_path):
    from cudastack.host.cells import check
    from cudastack.host.cells.matrix import Cell

    fields = {"base_image": "debian:bookworm", "torch": "2.13.0", "index": "cu130"}
    cell = Cell(name="c", python="3.11", cuda="13.0", cudnn="9.21.1.3", **fields)
    lock = tmp_path / "c.txt"
    lock.write_text(
        "torch==2.13.0 --hash=sha256:00\nnvidia-cudnn-cu13==9.20.0.48 --hash=sha256:01\n"
    )
    assert check.check_cell(cell, lock=lock).problems == (
        "lock c.txt holds nvidia-cudnn-cu13 9.20.0.48 but the cell pins 9.21.1.3; run cudastack "
        "lock --cell c again",
    )
    lock.write_text(
        "torch==2.13.0 --hash=sha256:00\nnvidia-cudnn-cu13==9.21.1.3 --hash=sha256:01\n"
    )
    assert check.check_cell(cell, lock=lock).ok
