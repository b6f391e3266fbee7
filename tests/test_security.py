"""What a run may expose, without an engine: redaction of secrets, container privileges and
network, file modes, and user strings that must never reach a shell or a Dockerfile line."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from cudastack.contract import failures, redact, runfolder
from cudastack.contract.errors import UserError
from cudastack.host.cells import check, images, matrix
from cudastack.host.run import container, loop, permissions
from cudastack.host.run.container import ContainerOptions
from cudastack.host.run.suite_args import SuiteArgs

PASSWORD = "s3cretpw"
PROXY = f"http://user:{PASSWORD}@proxy:3128"
TOKEN = "hf_CudastackTestToken1234567890"


@pytest.fixture
def umask():
    """Put this process's umask back after a test that sets it (a run's CLI sets it for good)."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)
    permissions._shared = False


# --- the redaction function -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Looking in indexes: https://user:{PASSWORD}@idx/simple", "https://user:****@idx/simple"),
        (f"ProxyError('{PROXY}')", "ProxyError('http://user:****@proxy:3128')"),
        ("git clone https://ghp_abcdef123456@github.com/x", "https://****@github.com/x"),
        ("a password with an @: http://u:p@ss@host/", "http://u:****@host/"),
        (f"HF_TOKEN={TOKEN} python x.py", "HF_TOKEN=(redacted) python x.py"),
        ("AWS_SECRET_ACCESS_KEY=abc NCCL_DEBUG=INFO", "_KEY=(redacted) NCCL_DEBUG=INFO"),
    ],
)
def test_text_hides_url_credentials_and_secret_assignments(text, expected):
    assert expected in redact.text(text)
    assert PASSWORD not in redact.text(text) and TOKEN not in redact.text(text)


@pytest.mark.parametrize(
    "text",
    [
        "gemm[dtype=bf16,n=512]",
        "sort[key=3,n=8]",  # a case id: lower-case parameters are no variables
        "https://pypi.org/simple/torch/",
        "mail me at someone@example.com",
        "ssh git@github.com",
    ],
)
def test_text_leaves_what_holds_no_secret(text):
    assert redact.text(text) == text


def test_known_secret_values_are_hidden_wherever_they_occur():
    secrets = redact.secret_values({"HF_TOKEN": TOKEN, "HTTPS_PROXY": f"user:{PASSWORD}@p:3128"})
    assert secrets == {TOKEN, PASSWORD}
    line = f"token is {TOKEN}; proxy user:{PASSWORD}@p:3128 refused"
    assert redact.text(line, secrets) == (
        "token is (redacted); proxy user:(redacted)@p:3128 refused"
    )


def test_short_values_are_never_replaced_as_text():
    # SOME_KEY=1 would otherwise blank out every 1 of a log.
    assert redact.secret_values({"SOME_KEY": "1", "AUTH": "true", "U": "http://a:b@h"}) == set()
    assert redact.text("1 true", {"1", "true"}) == "1 true"


def test_environment_redacts_secret_names_and_credentials_in_values():
    env = {
        "HF_TOKEN": TOKEN,
        "WANDB_API_KEY": "abc",
        "HTTPS_PROXY": PROXY,
        "https_proxy": f"user:{PASSWORD}@proxy:3128",  # curl and pip take it without a scheme
        "NCCL_DEBUG": "INFO",
    }
    assert redact.environment(env) == {
        "HF_TOKEN": "(redacted)",
        "WANDB_API_KEY": "(redacted)",
        "HTTPS_PROXY": "http://user:****@proxy:3128",
        "https_proxy": "user:****@proxy:3128",
        "NCCL_DEBUG": "INFO",
    }


def test_an_env_option_is_recorded_without_its_secret():
    assert redact.assignment(f"HF_TOKEN={TOKEN}") == "HF_TOKEN=(redacted)"
    assert redact.assignment(f"HTTPS_PROXY={PROXY}") == "HTTPS_PROXY=http://user:****@proxy:3128"
    assert redact.assignment("NCCL_DEBUG=INFO") == "NCCL_DEBUG=INFO"


def test_every_recorded_reason_is_redacted():
    # Case failures, build and log reasons and what the table shows all pass failures.clean.
    exc = ConnectionError(f"cannot reach {PROXY}: HF_TOKEN={TOKEN} refused")
    reason = failures.exception_reason(exc)
    assert PASSWORD not in reason and TOKEN not in reason
    assert PASSWORD not in failures.log_reason([f"ERROR: could not fetch via {PROXY}"])


# --- where the host records text --------------------------------------------------------------


def test_build_lines_and_failure_reason_are_redacted(monkeypatch, tmp_path):
    monkeypatch.setenv("HTTPS_PROXY", PROXY)
    monkeypatch.setenv("HF_TOKEN", TOKEN)

    class Api:
        def build(self, **kw):
            assert kw["buildargs"]["HTTPS_PROXY"] == PROXY  # the build itself gets it
            yield {"stream": f"Step 3/9 : RUN pip install\nusing proxy {PROXY}\n"}
            yield {"stream": f"token {TOKEN} and user:{PASSWORD}@proxy\n"}
            yield {"error": f"ProxyError: {PROXY} refused"}

    class Client:
        api = Api()

        class images:
            @staticmethod
            def remove(image):
                pass

    (cell,) = matrix.load(matrix.DEFAULT_MATRIX)[:1]
    seen: list[str] = []
    with pytest.raises(images.BuildFailed) as failed:
        images.build(Client(), cell, "t:1", "h", tmp_path, seen.append)
    recorded = "\n".join(seen) + str(failed.value)
    assert "user:****@proxy:3128" in recorded
    assert PASSWORD not in recorded and TOKEN not in recorded


def test_the_resolution_check_says_nothing_of_the_proxy_password(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", PROXY)
    stderr = f"error: Failed to fetch: `https://pypi.org/simple/torch/`\n  Caused by: {PROXY}\n"
    monkeypatch.setattr(check, "_uv", lambda: "uv")
    monkeypatch.setattr(
        check.subprocess,
        "run",
        lambda *a, **k: subprocess.CompletedProcess(a, 2, "", stderr),
    )
    (cell,) = matrix.load(matrix.DEFAULT_MATRIX)[:1]
    found = check.resolve(cell, None, None)
    assert found.unreachable and PASSWORD not in found.unreachable


def test_container_log_and_reason_are_redacted(monkeypatch, tmp_path):
    monkeypatch.setenv("HTTPS_PROXY", PROXY)  # the host's: its password is known

    class Container:
        def __init__(self):
            self.attrs = {"State": {"OOMKilled": False}}

        def start(self):
            pass

        def logs(self, stream, follow):
            yield f"token {TOKEN}\nproxy user:{PASSWORD}@proxy\n".encode()
            yield f"failed: {PROXY}".encode()  # no line end: the last piece of the log

        def wait(self, timeout):
            return {"StatusCode": 1}

        def reload(self):
            pass

        def remove(self, force):
            pass

    class Engine:
        class containers:
            @staticmethod
            def create(**kw):
                return Container()

    kw = {"image": "x", "environment": {"HF_TOKEN": TOKEN}}  # what the worker was given
    outcome = container.run_container(Engine(), kw, tmp_path, 10)
    log = (tmp_path / runfolder.LOG).read_text()
    assert "token (redacted)" in log and "user:****@proxy:3128" in log
    for text in (log, outcome.reason):
        assert TOKEN not in text and PASSWORD not in text


def test_shell_puts_no_value_on_the_docker_command_line(monkeypatch):
    # Every user of the host can read a process's command line (ps); its environment they cannot.
    from cudastack.host.cli import handoff

    called = {}

    def call(argv, env):
        called.update(argv=argv, env=env)
        return 0

    monkeypatch.setattr(handoff.shutil, "which", lambda name: "/usr/bin/docker")
    monkeypatch.setattr(handoff, "engine", lambda what: object())
    monkeypatch.setattr(handoff, "_existing_tag", lambda client, cell, path: "cudastack/c:1")
    monkeypatch.setattr(handoff.subprocess, "call", call)
    (cell,) = matrix.load(matrix.DEFAULT_MATRIX)[:1]

    ctx = type("Ctx", (), {"args": ("true",)})()
    with pytest.raises(SystemExit):
        handoff.shell_cmd(
            ctx, cell.name, matrix.DEFAULT_MATRIX, "none", "16g", [f"HF_TOKEN={TOKEN}"]
        )
    assert not [a for a in called["argv"] if TOKEN in a]
    assert called["argv"][called["argv"].index("HF_TOKEN") - 1] == "-e"
    assert called["env"]["HF_TOKEN"] == TOKEN  # docker reads it from there


# --- container privileges and network --------------------------------------------------------


def kwargs(tmp_path: Path, **opts: object) -> dict:
    return container.container_kwargs(
        "cudastack/x:1",
        SuiteArgs(["gemm"], env=[f"HF_TOKEN={TOKEN}"]),
        tmp_path,
        "cellA",
        "run1",
        "sha256:abc",
        ContainerOptions(**opts),  # type: ignore[arg-type]
    )


ESCALATIONS = ("privileged", "cap_add", "pid_mode", "security_opt", "userns_mode", "devices")


@pytest.mark.parametrize("opts", [{}, {"ipc_host": True}, {"network": "none"}, {"gpus": "all"}])
def test_containers_are_never_privileged(tmp_path, opts):
    kw = kwargs(tmp_path, **opts)
    assert not set(ESCALATIONS) & set(kw)
    assert kw["user"] == f"{os.getuid()}:{os.getgid()}"
    assert kw["network_mode"] == opts.get("network", "bridge")


def test_the_host_network_only_when_asked(tmp_path):
    assert kwargs(tmp_path)["network_mode"] == "bridge"  # Docker's default
    assert kwargs(tmp_path, network="none")["network_mode"] == "none"
    assert kwargs(tmp_path, network="host")["network_mode"] == "host"


@pytest.mark.parametrize("network", ["", "HOST", "container:other", "host; id", "bridge\n"])
def test_a_network_docker_would_take_otherwise_is_refused(network):
    # container:<id> would join another container's namespaces: not ours to offer.
    with pytest.raises(UserError, match=r"--network .*: give one of bridge, none, host"):
        ContainerOptions(network=network)


# --- file modes -------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("shared", "folder", "file"), [(False, 0o700, 0o600), (True, 0o750, 0o640)]
)
def test_a_run_folder_and_its_files_follow_the_runs_choice(umask, tmp_path, shared, folder, file):
    permissions.apply(shared)
    run_dir = loop.new_run_dir(None, tmp_path / "results", "run-1")
    runfolder.write_json(run_dir / runfolder.STATE, {"state": "running"})
    (run_dir / "cell").mkdir()
    with open(run_dir / "cell" / runfolder.LOG, "a") as log:  # as the launchers write logs
        log.write("line\n")
    assert mode(run_dir) == folder and mode(run_dir / "cell") == folder
    assert mode(run_dir / runfolder.STATE) == file
    assert mode(run_dir / "cell" / runfolder.LOG) == file


def test_a_run_folder_is_private_whatever_the_umask(umask, tmp_path):
    os.umask(0)  # a caller that never chose: the folder alone keeps everything in it private
    assert mode(loop.new_run_dir(None, tmp_path, "run-1")) == 0o700


def test_atomic_write_reads_the_umask_without_changing_it(umask, tmp_path):
    os.umask(0o027)
    runfolder.write_json(tmp_path / "a.json", {})
    assert mode(tmp_path / "a.json") == 0o640
    assert os.umask(0o027) == 0o027


def test_the_image_keeps_a_readable_lock_whatever_the_umask(umask, tmp_path):
    # COPY keeps modes: a 0600 lock in the image would be root's alone, unreadable by the
    # invoking uid the worker runs as.
    os.umask(permissions.PRIVATE_UMASK)
    locks = tmp_path / "locks"
    locks.mkdir()
    (cell,) = matrix.load(matrix.DEFAULT_MATRIX)[:1]
    cell.lock_path(locks).write_text("torch==2.9.1 --hash=sha256:00\n")
    ctx = images.make_context(cell, matrix.DEFAULT_MATRIX.parent / "Dockerfile", locks, None, None)
    try:
        assert mode(ctx / "inputs" / "lock.txt") == 0o644
        assert mode(ctx) == 0o700  # the context on this host stays private
    finally:
        shutil.rmtree(ctx)


# --- user strings never reach a shell or a Dockerfile line ------------------------------------

INJECTIONS = ["x;id", "x$(id)", "x`id`", "x\nRUN id", "x && id", "x|id", "x'y", 'x"y', "x${HOME}"]


@pytest.mark.parametrize("value", INJECTIONS)
@pytest.mark.parametrize("key", ["name", "base_image", "torch", "python", "index", "cudnn"])
def test_a_cell_field_with_shell_syntax_is_refused(key, value):
    fields = {"base_image": "ubuntu:24.04", "torch": "2.9.1", "index": "cpu", "python": "3.12"}
    with pytest.raises(matrix.MatrixError, match=f"field '{key}' has an invalid value"):
        matrix.checked_cell({**fields, key: value}, "matrix.toml: cell 1")


@pytest.mark.parametrize("value", [*INJECTIONS, "numpy @ https://x/y.whl", "-r /etc/passwd"])
def test_a_package_spec_with_shell_syntax_is_refused(value):
    fields = {"base_image": "ubuntu:24.04", "torch": "2.9.1", "index": "cpu", "python": "3.12"}
    with pytest.raises(matrix.MatrixError, match="invalid requirement"):
        matrix.checked_cell({**fields, "packages": [value]}, "matrix.toml: cell 1")


@pytest.mark.parametrize("value", ["0;id", "$(id)", "0\n1", "all,`id`"])
def test_gpus_with_shell_syntax_is_refused(value):
    with pytest.raises(UserError, match="--gpus"):
        loop.resolve_gpus(value, None)  # type: ignore[arg-type]
