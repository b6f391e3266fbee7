"""Matrix validation, names, build args and content-hash tags (no engine needed)."""

import dataclasses
import hashlib
import json
import re
import textwrap
from dataclasses import replace

import pytest

from cudastack.host.cells import matrix, reproduce, stacks
from cudastack.host.cells.matrix import MatrixError

DOCKERFILE = matrix.DEFAULT_MATRIX.parent / "Dockerfile"

CELL = """
[[cell]]
base_image = "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04"
cuda = "12.8"
cudnn = "9"
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
        (('cudnn = "9"', 'cudnn = "8"'), "field 'cudnn' is 8 but the base image has cuDNN 9"),
        (("12.8.1-cudnn-runtime", "12.6.3-cudnn-runtime"), "is CUDA 12.6 but the cell is 12.8"),
        (("12.8.1-cudnn-runtime-ubuntu24.04", "latest"), "is not an nvidia/cuda tag"),
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


# A change to every field of a cell that reaches the image. cuda and cudnn reach no build
# argument: they state what index and base_image already fix (the loader checks them against
# those), so they change the image only through those two fields.
FIELD_CHANGES = {
    "name": "mine",
    "base_image": "nvidia/cuda:12.8.0-cudnn-runtime-ubuntu24.04",
    "torch": "2.9.0",
    "torchvision": "0.24.0",
    "index": "cu126",
    "python": "3.13",
    "packages": ("einops==0.8.0",),
}


def test_every_field_that_reaches_the_image_changes_the_tag(tmp_path):
    assert set(FIELD_CHANGES) == set(matrix.KEYS) - {"cuda", "cudnn"}
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
        "BASE_IMAGE": "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04",
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
