"""Matrix validation, names, build args and content-hash tags (no engine needed)."""

import dataclasses
import hashlib
import json
import re
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest

from cudastack.host.cells import matrix, reproduce, stacks
from cudastack.host.cells.matrix import MatrixError

DOCKERFILE = matrix.DEFAULT_MATRIX.parent / "Dockerfile"

CELL = """
[[cell]]
base_image = "nvidia/cuda:12.8.1-runtime-ubuntu24.04"
cuda = "12.8"
torch = "2.9.1"
torchvision = "0.24.1"
index = "cu128"
python = "3.12"
"""


def write(tmp_path, text, name="matrix.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_default_matrix_spans_cuda_11_8_to_13_0_and_a_cpu_cell():
    cells = matrix.load(matrix.DEFAULT_MATRIX)
    cudas = {c.cuda for c in cells}
    assert {"11.8", "12.8", "13.0"} <= cudas
    assert any(c.index == "cpu" for c in cells)
    assert len({c.name for c in cells}) == len(cells)
    for c in cells:
        assert c.index in stacks.published_variants(c.torch), c.name


def test_names_are_derived_and_defaults_apply(tmp_path):
    text = (
        '[defaults]\npackages = ["einops==0.8.0"]\n'
        + CELL
        + CELL.replace('python = "3.12"', 'python = "3.12"\nname = "mine"\npackages = []')
    )
    a, b = matrix.load(write(tmp_path, text))
    assert a.name == "cu12.8-torch2.9.1-py3.12"
    assert a.packages == ("einops==0.8.0",)
    assert (b.name, b.packages) == ("mine", ())
    assert a.torch_cuda == "12.8"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('cuda = "12.8"', 'cuda = "12.8"\ncolour = "red"'), "field 'colour' is unknown"),
        (('torch = "2.9.1"', ""), "field 'torch' is missing"),
        (
            ('index = "cu128"', 'index = "cu121"'),
            "cu121 has no torch 2.9.1 wheels; published: cpu, cu126",
        ),
        (('torchvision = "0.24.1"', 'torchvision = "0.23.0"'), "0.23.0 does not match torch 2.9.1"),
        (('cuda = "12.8"', 'cuda = "12.6"'), "field 'cuda' must be 12.8 to match index cu128"),
        (('python = "3.12"', 'python = "3.10"'), "3.10 is not packaged for ubuntu24.04"),
        (('cuda = "12.8"', 'cuda = "12.8"\ncudnn = "9"'), "field 'cudnn' is '9': it is the exact"),
        (('cuda = "12.8"', 'cuda = "12.8"\ncudnn = "9.1"'), "field 'cudnn' has an invalid value"),
        (('cuda = "12.8"', 'cuda = "12.8"\nnccl = "2.27.7.1.0"'), "field 'nccl' has an invalid"),
        (('cuda = "12.8"', 'cuda = "12.8"\nnccl = "2.27.x"'), "field 'nccl' has an invalid value"),
        (
            ("12.8.1-runtime", "12.8.1-cudnn-runtime"),
            "is nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04, which carries a cuDNN torch does "
            "not load; use "
            "nvidia/cuda:12.8.1-runtime-ubuntu24.04",
        ),
        (("12.8.1-runtime", "12.6.3-runtime"), "is CUDA 12.6 but the cell is 12.8"),
        (("12.8.1-runtime-ubuntu24.04", "latest"), "is not an nvidia/cuda tag"),
        (('torch = "2.9.1"', 'torch = "2.9.1; rm -rf /"'), "field 'torch' has an invalid value"),
        (("nvidia/cuda:", "nvidia/cuda:$(id)"), "field 'base_image' has an invalid value"),
        (('python = "3.12"', 'python = "3.12"\nname = "a b"'), "field 'name' has an invalid value"),
        (('python = "3.12"', 'python = "3.12"\npackages = ["x; echo"]'), "invalid requirement"),
        (('python = "3.12"', 'python = "3.12"\npackages = "x"'), "must be a list"),
    ],
)
def test_bad_cells_name_the_cell_and_the_field(tmp_path, edit, message):
    old, new = edit
    assert old in CELL
    path = write(tmp_path, CELL.replace(old, new))
    with pytest.raises(MatrixError, match=re.escape(message)) as info:
        matrix.load(path)
    assert str(info.value).startswith("matrix.toml: cell ")
    assert "\n" not in str(info.value)


def test_duplicate_names_and_file_errors(tmp_path):
    with pytest.raises(MatrixError, match="repeats cell 1"):
        matrix.load(write(tmp_path, CELL + CELL))
    with pytest.raises(MatrixError, match="does not exist"):
        matrix.load(tmp_path / "none.toml")
    with pytest.raises(MatrixError, match="not valid TOML"):
        matrix.load(write(tmp_path, "[[cell]\n"))
    with pytest.raises(MatrixError, match="no \\[\\[cell\\]\\] tables"):
        matrix.load(write(tmp_path, "[defaults]\n"))
    with pytest.raises(MatrixError, match="unknown table 'cells'"):
        matrix.load(write(tmp_path, "[[cells]]\n"))


def test_cpu_cells_on_any_base(tmp_path):
    text = '[[cell]]\nbase_image = "debian:bookworm"\ntorch = "2.13.0"\nindex = "cpu"\n'
    text += 'python = "3.11"\n'
    (cell,) = matrix.load(write(tmp_path, text))
    assert cell.name == "cpu-torch2.13.0-py3.11" and cell.torch_cuda == ""
    with pytest.raises(MatrixError, match="must be empty for the cpu index"):
        matrix.load(write(tmp_path, text + 'cuda = "12.8"\n'))
    for library, version in (("cudnn", "9.19.1.2"), ("nccl", "2.27.7")):
        with pytest.raises(
            MatrixError, match=f"field '{library}' pins a CUDA library, but index cpu is a CPU"
        ):
            matrix.load(write(tmp_path, text + f'{library} = "{version}"\n'))


def test_select_cells(tmp_path):
    cells = matrix.load(matrix.DEFAULT_MATRIX)
    assert [c.name for c in matrix.select(cells, ["cpu-torch2.9.1-py3.12"])] == [
        "cpu-torch2.9.1-py3.12"
    ]
    with pytest.raises(MatrixError, match=r"unknown cell nope; cells: cu11\.8"):
        matrix.select(cells, ["nope"])


def test_every_build_arg_is_declared_in_the_dockerfile():
    declared = set(re.findall(r"^ARG (\w+)", DOCKERFILE.read_text(), flags=re.M))
    for cell in matrix.load(matrix.DEFAULT_MATRIX):
        missing = set(cell.build_args()) - declared
        assert not missing, f"{cell.name} needs ARG {missing} that the Dockerfile lacks"
    assert "INPUTS_HASH" in declared


def test_tag_is_stable_and_changes_with_every_input(tmp_path):
    (cell,) = matrix.load(write(tmp_path, CELL))
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(DOCKERFILE.read_text())
    locks = tmp_path / "locks"
    tag = cell.image_tag(dockerfile, locks)
    assert tag == cell.image_tag(dockerfile, locks)
    assert re.fullmatch(r"cudastack/cu12\.8-torch2\.9\.1-py3\.12:[0-9a-f]{16}", tag)
    other = matrix.load(write(tmp_path, CELL.replace('"0.24.1"', '"0.24.0"'), "m2.toml"))[0]
    assert other.image_tag(dockerfile, locks) != tag
    dockerfile.write_text(DOCKERFILE.read_text() + "\n# changed\n")
    changed = cell.image_tag(dockerfile, locks)
    assert changed != tag
    locks.mkdir()
    cell.lock_path(locks).write_text("torch==2.9.1 --hash=sha256:00\n")
    assert cell.image_tag(dockerfile, locks) not in (tag, changed)


# A change to every field of a cell that reaches the image. cuda reaches no build argument: it
# states what index already fixes (the loader checks it against index), so it changes the image
# only through that field.
FIELD_CHANGES = {
    "name": "mine",
    "base_image": "nvidia/cuda:12.8.0-runtime-ubuntu24.04",
    "cudnn": "9.19.1.2",
    "nccl": "2.27.7",
    "torch": "2.9.0",
    "torchvision": "0.24.0",
    "index": "cu126",
    "python": "3.13",
    "packages": ("einops==0.8.0",),
}


def test_every_field_that_reaches_the_image_changes_the_tag(tmp_path):
    assert set(FIELD_CHANGES) == set(matrix.KEYS) - {"cuda"}
    (cell,) = matrix.load(write(tmp_path, CELL))
    tag = cell.image_tag(DOCKERFILE, tmp_path)
    tags = {field: replace(cell, **{field: value}).image_tag(DOCKERFILE, tmp_path)
            for field, value in FIELD_CHANGES.items()}  # fmt: skip
    assert tag not in tags.values(), [f for f, t in tags.items() if t == tag]
    # A package's version alone, too: EXTRA_PACKAGES is part of what the image is.
    einops = replace(cell, packages=("einops==0.8.1",)).image_tag(DOCKERFILE, tmp_path)
    assert einops != tags["packages"]


def test_the_lock_and_dockerfile_count_by_content_not_by_where_they_are(tmp_path):
    (cell,) = matrix.load(write(tmp_path, CELL))
    lock = "torch==2.9.1 --hash=sha256:" + "0" * 64 + "\n"
    for folder in ("a", "b"):
        (tmp_path / folder / "locks").mkdir(parents=True)
        cell.lock_path(tmp_path / folder / "locks").write_text(lock)
        (tmp_path / folder / "Dockerfile").write_text(DOCKERFILE.read_text())
    tag_a = cell.image_tag(tmp_path / "a" / "Dockerfile", tmp_path / "a" / "locks")
    assert cell.image_tag(tmp_path / "b" / "Dockerfile", tmp_path / "b" / "locks") == tag_a
    # One hash in the lock changed, same length and same file name: another image.
    cell.lock_path(tmp_path / "b" / "locks").write_text(lock.replace("0" * 64, "0" * 63 + "1"))
    assert cell.image_tag(tmp_path / "a" / "Dockerfile", tmp_path / "b" / "locks") != tag_a
    # The Dockerfile's text changed, same length.
    text = DOCKERFILE.read_text()
    (tmp_path / "b" / "Dockerfile").write_text(text.replace("FROM", "from", 1))
    assert cell.image_tag(tmp_path / "b" / "Dockerfile", tmp_path / "a" / "locks") != tag_a


def test_a_cells_tag_does_not_depend_on_the_rest_of_the_matrix(tmp_path):
    cpu = '[[cell]]\nbase_image = "debian:bookworm"\ntorch = "2.9.1"\nindex = "cpu"\n'
    cpu += 'python = "3.11"\npackages = ["einops==0.8.0"]\n'
    # The same two cells in either order, one's packages spelled as [defaults], a comment.
    one = matrix.load(write(tmp_path, cpu + CELL, "one.toml"))
    other = matrix.load(
        write(
            tmp_path,
            '# a comment\n[defaults]\npackages = ["einops==0.8.0"]\n'
            + CELL.replace('python = "3.12"', 'python = "3.12"\npackages = []')
            + cpu.replace('packages = ["einops==0.8.0"]\n', ""),
            "other.toml",
        )
    )
    tags = {c.name: c.image_tag(DOCKERFILE, tmp_path) for c in one}
    assert {c.name: c.image_tag(DOCKERFILE, tmp_path) for c in other} == tags
    assert len(set(tags.values())) == 2


def test_driver_verdicts():
    assert stacks.driver_verdict("575.57.08", "12.8")[0] == "ok"
    status, reason = stacks.driver_verdict("535.104.05", "12.8")
    assert status == "compat" and "minor-version compatibility" in reason
    status, reason = stacks.driver_verdict("535.104.05", "13.0")
    assert status == "no" and "needs 580.65.06" in reason
    assert stacks.driver_verdict("470.82.01", "11.8")[0] == "compat"
    assert stacks.driver_verdict("440.33", "11.8")[0] == "no"


def test_nvidia_tag_spellings():
    assert stacks.parse_nvidia_tag("11.8.0-cudnn8-runtime-ubuntu22.04")["cudnn"] == "cudnn8"
    assert stacks.parse_nvidia_tag("12.8.1-cudnn-runtime-ubuntu24.04")["os"] == "ubuntu24.04"
    assert stacks.parse_nvidia_tag("12.8.1-runtime-ubuntu24.04")["cudnn"] == ""
    assert stacks.parse_nvidia_tag("latest") is None


def test_runtime_requirement_expressions():
    """NVIDIA_REQUIRE_* as the NVIDIA container toolkit evaluates them: space ORs, comma ANDs,
    versions compare by number, a property it does not know is ignored, a host value that is
    unknown fails every condition on it."""
    host = {"cuda": "12.2", "driver": "535.104.05", "brand": "tesla", "arch": "8.0"}
    unmet = stacks.unmet_requirement
    assert unmet(["cuda>=12.2"], host) is None
    assert unmet(["cuda>=12.10"], host) == "cuda>=12.10"  # 12.10 > 12.2 as numbers, not text
    assert unmet(["cuda>=12.8 brand=tesla,driver>=535,driver<536"], host) is None
    assert unmet(["cuda>=12.8 brand=tesla,driver>=550,driver<551"], host) == "cuda>=12.8"
    assert unmet(["cuda>=12.8 brand=geforce,driver>=535,driver<536"], host) == "cuda>=12.8"
    assert unmet(["cuda>=12.0", "arch>=9.0"], host) == "arch>=9.0"  # variables are ANDed
    assert unmet(["cuda>=12.0 ", "driver!=535.104.05"], host) == "driver!=535.104.05"
    assert unmet(["cuda>=12.0,jetpack>=6"], host) is None  # not a property the runtime checks
    assert unmet(["cuda>=11.0"], {**host, "cuda": ""}) == "cuda>=11.0"
    assert unmet([], host) is None
    assert stacks.derived_requirements("nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04") == [
        "cuda>=12.8"
    ]
    digest = "@sha256:" + "0" * 64
    assert stacks.derived_requirements(
        f"docker.io/nvidia/cuda:11.8.0-runtime-ubuntu22.04{digest}"
    ) == ["cuda>=11.8"]
    assert stacks.derived_requirements("ubuntu:24.04") == []
    assert stacks.derived_requirements("127.0.0.1:5000/other/cuda:12.8.1-runtime-ubuntu24.04") == []


def test_build_args_spell_every_field_as_the_dockerfile_reads_it():
    cell = matrix.Cell(
        name="cpu-torch2.9.1-py3.11",
        base_image="debian:bookworm",
        torch="2.9.1",
        index="cpu",
        python="3.11",
        torchvision="0.24.1",
        packages=("einops==0.8.0", "numpy<3"),
    )
    # EXTRA_PACKAGES goes to `pip install` unquoted: one space between requirements.
    assert cell.build_args() == {
        "BASE_IMAGE": "debian:bookworm",
        "PYTHON_VERSION": "3.11",
        "TORCH_VERSION": "2.9.1",
        "TORCHVISION_VERSION": "0.24.1",
        "TORCH_INDEX": "cpu",
        "TORCH_CUDA": "",
        "EXTRA_PACKAGES": "einops==0.8.0 numpy<3",
        "CELL_NAME": "cpu-torch2.9.1-py3.11",
    }


def test_the_inputs_hash_follows_its_recipe_so_anyone_can_recompute_a_tag(tmp_path):
    (cell,) = matrix.load(write(tmp_path, CELL))
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_bytes(b"FROM scratch\n")
    args = {
        "BASE_IMAGE": "nvidia/cuda:12.8.1-runtime-ubuntu24.04",
        "CELL_NAME": "cu12.8-torch2.9.1-py3.12",
        "EXTRA_PACKAGES": "",
        "PYTHON_VERSION": "3.12",
        "TORCHVISION_VERSION": "0.24.1",
        "TORCH_CUDA": "12.8",
        "TORCH_INDEX": "cu128",
        "TORCH_VERSION": "2.9.1",
    }
    # The recipe: sha256 over the Dockerfile's bytes, the build args as JSON with sorted keys
    # (so the order the code lists them in is no input), then the lock's bytes, or b"no lock".
    args_json = json.dumps(args, sort_keys=True).encode()
    no_lock = hashlib.sha256(b"FROM scratch\n" + args_json + b"no lock").hexdigest()
    assert cell.inputs_hash(dockerfile, tmp_path / "locks") == no_lock
    assert cell.image_tag(dockerfile, tmp_path / "locks") == f"cudastack/{cell.name}:{no_lock[:16]}"
    (tmp_path / "locks").mkdir()
    cell.lock_path(tmp_path / "locks").write_bytes(b"torch==2.9.1\n")
    locked = hashlib.sha256(b"FROM scratch\n" + args_json + b"torch==2.9.1\n").hexdigest()
    assert cell.inputs_hash(dockerfile, tmp_path / "locks") == locked


def test_a_recorded_cell_is_held_to_the_matrix_checks_before_reproduce_uses_it():
    # As record_inputs writes it to cell.json: every field, those left out as ''.
    recorded = matrix.Cell(
        name="c1", base_image="debian:12", torch="2.9.1", index="cpu", python="3.12"
    )
    cell = json.loads(json.dumps({"cell": dataclasses.asdict(recorded)}))["cell"]
    assert cell["cuda"] == cell["torchvision"] == "" and cell["packages"] == []
    record = {"cell": cell, "tag": "cudastack/c1:0123abcd", "dockerfile": "FROM x\n", "lock": ""}
    assert reproduce.checked_record(record, "cell.json") is record
    assert reproduce.cell_from(record) == recorded
    # A record edited since: the command never reaches the Dockerfile's ARG.
    tampered = {**record, "cell": {**cell, "torch": "2.9.1; curl x | sh"}}
    with pytest.raises(
        matrix.MatrixError,
        match=r"^cell.json: recorded cell: field 'torch' has an invalid value '2.9.1; curl x ",
    ):
        reproduce.checked_record(tampered, "cell.json")
    with pytest.raises(reproduce.ReproduceError, match=r"^cell.json holds no recorded cell"):
        reproduce.checked_record([cell], "cell.json")
    with pytest.raises(reproduce.ReproduceError, match=r"the recorded image tag 'a b' is not one"):
        reproduce.checked_record({**record, "tag": "a b"}, "cell.json")
    with pytest.raises(reproduce.ReproduceError, match=r"the recorded lock is missing or not text"):
        reproduce.checked_record({**record, "lock": None}, "cell.json")


def test_a_run_recorded_before_cudnn_pins_rebuilds_as_the_cell_it_was():
    # Its cudnn was the base image's generation ("8"), a label no build arg carried: the cell
    # comes back without it, with the build args (hence the tag) that run recorded.
    old_args = {
        "BASE_IMAGE": "nvidia/cuda:12.1.1-cudnn8-runtime-ubuntu22.04",
        "PYTHON_VERSION": "3.11",
        "TORCH_VERSION": "2.5.1",
        "TORCHVISION_VERSION": "",
        "TORCH_INDEX": "cu121",
        "TORCH_CUDA": "12.1",
        "EXTRA_PACKAGES": "",
        "CELL_NAME": "old",
    }
    cell = {
        "name": "old",
        "base_image": old_args["BASE_IMAGE"],
        "torch": "2.5.1",
        "index": "cu121",
        "python": "3.11",
        "cuda": "12.1",
        "cudnn": "8",
        "torchvision": "",
        "packages": [],
    }
    record = {"cell": cell, "tag": "cudastack/old:0123abcd", "dockerfile": "FROM x\n", "lock": ""}
    rebuilt = reproduce.cell_from(reproduce.checked_record(record, "cell.json"))
    assert rebuilt.cudnn == "" and rebuilt.build_args() == old_args


def test_library_pins_name_the_wheel_of_the_cells_cuda_major_and_reach_the_build_args(tmp_path):
    text = CELL.replace('cuda = "12.8"', 'cuda = "12.8"\ncudnn = "9.19.1.2"\nnccl = "2.27.7"')
    (cell,) = matrix.load(write(tmp_path, text))
    assert cell.library_pins() == ["nvidia-cudnn-cu12==9.19.1.2", "nvidia-nccl-cu12==2.27.7"]
    assert (cell.build_args()["CUDNN_VERSION"], cell.build_args()["NCCL_VERSION"]) == (
        "9.19.1.2",
        "2.27.7",
    )
    # A pinned cell never takes the name of its pair that keeps torch's own libraries.
    assert cell.name == "cu12.8-torch2.9.1-cudnn9.19.1.2-nccl2.27.7-py3.12"
    (plain,) = matrix.load(write(tmp_path, CELL, "plain.toml"))
    assert plain.library_pins() == [] and plain.name == "cu12.8-torch2.9.1-py3.12"
    assert stacks.library_wheel("cudnn", "11.8") == "nvidia-cudnn-cu11"
    assert stacks.library_wheel("nccl", "13.0") == "nvidia-nccl-cu13"


def test_the_default_matrix_pins_libraries_exactly_and_pairs_cells_that_differ_in_cudnn_alone():
    cells = matrix.load(matrix.DEFAULT_MATRIX)
    for c in cells:
        assert "cudnn" not in c.base_image.split(":")[1], c.name  # no cuDNN that nothing loads
        for version in (c.cudnn, c.nccl):
            assert version == "" or re.fullmatch(r"\d+(\.\d+){2,3}", version), c.name
    fields = [dataclasses.asdict(c) for c in cells]
    pairs = [
        (a["name"], b["name"])
        for a in fields
        for b in fields
        if a["cudnn"] != b["cudnn"]
        and {k: v for k, v in a.items() if k not in ("name", "cudnn")}
        == {k: v for k, v in b.items() if k not in ("name", "cudnn")}
    ]
    assert pairs, "no two default cells differ only in cudnn"


def test_the_platform_list_names_every_manylinux_tag_the_bases_glibc_accepts():
    # pip matches each --platform value exactly: a wheel tagged only manylinux_2_27 (cuDNN 9.20
    # for CUDA 13) installs on glibc 2.36 only if manylinux_2_27 is listed.
    tags = stacks.pip_platforms("cudastack-test-base:bookworm", "x86_64")
    assert tags[0] == "manylinux_2_36_x86_64" and tags[-1] == "linux_x86_64"
    assert [f"manylinux_2_{n}_x86_64" for n in range(36, 16, -1)] == tags[:20]
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"} <= set(tags)
    noble = stacks.pip_platforms("nvidia/cuda:13.0.1-runtime-ubuntu24.04", "aarch64")
    assert noble[0] == "manylinux_2_39_aarch64" and "manylinux_2_27_aarch64" in noble
    assert "manylinux1_aarch64" not in noble  # the legacy tags before 2014 were x86 only
    assert stacks.glibc("ubuntu:22.04") == (2, 35)
    assert stacks.glibc("debian:12@sha256:" + "0" * 64) == (2, 36)
    assert stacks.glibc("debian:bookworm-slim") == stacks.glibc("debian:12-slim") == (2, 36)
    assert stacks.glibc("example/base:1") == stacks.DEFAULT_GLIBC
    assert stacks.glibc("127.0.0.1:5000/image") == stacks.DEFAULT_GLIBC
    assert stacks.uv_platform("nvidia/cuda:12.8.1-runtime-ubuntu22.04", "x86_64") == (
        "x86_64-manylinux_2_35"
    )


FAKE_TORCH = '''"""torch as the Dockerfile's library check reads it, versions from the environment:
cuDNN from torch, NCCL from the libnccl.so.2 it loaded (ncclGetVersion's integer code)."""
import ctypes
import os
from types import SimpleNamespace

backends = SimpleNamespace(cudnn=SimpleNamespace(version=lambda: int(os.environ["CUDNN"])))


class LoadedNccl:
    def __init__(self, name, mode=0):
        assert name == "libnccl.so.2" and mode & os.RTLD_NOLOAD  # the one torch loaded

    def ncclGetVersion(self, pointer):
        pointer._obj.value = int(os.environ["NCCL"])
        return 0


ctypes.CDLL = LoadedNccl
'''


def _library_check(tmp_path, loaded_cudnn: int, loaded_nccl: int, *pins: str):
    """The Dockerfile's build-time library check, run as the build runs it, on a fake torch."""
    text = DOCKERFILE.read_text().replace("\\\n", "")  # the lines as the builder joins them
    (code,) = re.findall(r'python -c "(import sys, [^"]*cudnn\.version\(\)[^"]*)"', text)
    (tmp_path / "torch.py").write_text(FAKE_TORCH)
    env = {"PYTHONPATH": str(tmp_path), "CUDNN": str(loaded_cudnn), "NCCL": str(loaded_nccl)}
    return subprocess.run(
        [sys.executable, "-c", code, *pins], capture_output=True, text=True, env=env
    )


def test_the_build_fails_when_torch_loads_another_cudnn_or_nccl_than_the_pin(tmp_path):
    # ncclGetVersion's code is 23003 for 2.30.3 (NCCL >= 2.9), 2708 for 2.7.8.
    ok = _library_check(tmp_path, 92101, 23003, "9.21.1.3", "2.30.3")
    assert ok.returncode == 0, ok.stderr
    assert "cuDNN 92101 loaded (cell pin: 9.21.1.3), NCCL 2.30.3 (cell pin: 2.30.3)" in ok.stdout
    # cuDNN 8 encodes its version in thousands: 8.9.2 is 8902; so does NCCL before 2.9.
    assert _library_check(tmp_path, 8902, 2708, "8.9.2.26", "2.7.8").returncode == 0
    # torch's own cuDNN (the pin's wheel not installed) is a failed build, naming both.
    cudnn = _library_check(tmp_path, 92000, 22907, "9.21.1.3", "")
    assert cudnn.returncode == 1
    assert cudnn.stderr.strip() == (
        "wrong library: torch loads cuDNN 92000 (cudnn.version()) but the cell pins 9.21.1.3 "
        "(92101)"
    )
    nccl = _library_check(tmp_path, 92101, 22907, "9.21.1.3", "2.30.3")
    assert nccl.returncode == 1
    assert nccl.stderr.strip() == "wrong library: torch loads NCCL 2.29.7 but the cell pins 2.30.3"
