"""Dockerfile syntax only BuildKit knows is refused before anything is built: the Docker SDK
for Python builds with the classic builder, which would fail at that step with advice to enable
BuildKit that cannot help."""

from __future__ import annotations

import re

import pytest
from conftest import cli

from cudastack.contract.errors import EXIT_BAD_INPUT
from cudastack.host.cells import images
from cudastack.host.cells.matrix import DEFAULT_MATRIX


@pytest.mark.parametrize(
    ("text", "found"),
    [
        (
            "FROM x\nRUN --mount=type=cache,target=/root/.cache pip install y\n",
            "line 2: RUN --mount",
        ),
        ("FROM x\nRUN --network=none --mount=type=tmpfs,dst=/t true\n", "line 2: RUN --mount"),
        ("FROM x\nRUN --network=none make\n", "line 2: RUN --network"),
        ("FROM x\nRUN --security=insecure make\n", "line 2: RUN --security"),
        ("FROM x\nCOPY --link a /b\n", "line 2: COPY --link"),
        ("FROM x\nCOPY --chmod=755 a /b\n", "line 2: COPY --chmod"),
        ("FROM x\nADD --checksum=sha256:00 https://e/x /x\n", "line 2: ADD --checksum"),
        ("FROM x\nRUN <<EOF\necho hi\nEOF\n", "line 2: a heredoc in RUN"),
        ("FROM x\nCOPY <<-'END' /etc/x\nhi\nEND\n", "line 2: a heredoc in COPY"),
        # A flag on a continuation line belongs to the instruction that starts above it.
        ("FROM x\n\nRUN \\\n  --mount=type=secret,id=a \\\n  true\n", "line 3: RUN --mount"),
    ],
)
def test_buildkit_only_syntax_is_found_with_its_line(text, found):
    assert images.buildkit_only(text) == found


@pytest.mark.parametrize(
    "text",
    [
        "FROM x\nCOPY --chown=1:1 --from=builder /a /b\nADD --chown=1:1 a /b\n",
        "FROM x\n# RUN --mount=type=cache,target=/c true\nRUN true\n",  # a comment
        'FROM x\nRUN python -c "print(1 << 3)"\n',  # a shift, not a heredoc
        "FROM x\nENV A=--mount\nLABEL note=<<EOF\n",  # not RUN/COPY/ADD
        "FROM x\nRUN pip install --network-timeout 5 y\n",  # the command's flag, not RUN's
        "FROM x\nRUN podman run --network=none --mount=type=tmpfs,dst=/t img\n",  # ditto
    ],
)
def test_what_the_classic_builder_takes_passes(text):
    assert images.buildkit_only(text) == ""


def test_the_shipped_dockerfile_is_classic():
    text = (DEFAULT_MATRIX.parent / "Dockerfile").read_text(encoding="utf-8")
    assert images.buildkit_only(text) == ""


def test_a_buildkit_dockerfile_beside_a_matrix_is_one_line_before_any_build(tmp_path):
    shipped = DEFAULT_MATRIX.parent
    (tmp_path / "matrix.toml").write_text((shipped / "matrix.toml").read_text())
    mount = "RUN --mount=type=cache,target=/root/.cache/pip "
    shipped_text = (shipped / "Dockerfile").read_text()
    dockerfile = re.sub("^RUN ", mount, shipped_text, count=1, flags=re.MULTILINE)
    (tmp_path / "Dockerfile").write_text(dockerfile)
    for command in (["build"], ["run", "--cell", "cpu-torch2.9.1-py3.12"], ["bench"]):
        proc = cli(*command, "--matrix", str(tmp_path / "matrix.toml"), cwd=tmp_path)
        assert proc.returncode == EXIT_BAD_INPUT, proc.stdout + proc.stderr
        assert proc.stderr.count("\n") == 1 and "RUN --mount needs BuildKit" in proc.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["Dockerfile", "matrix.toml"]
