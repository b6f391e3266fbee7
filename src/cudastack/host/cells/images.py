"""Cell images through the Docker SDK: engine connection, build context, build, identity."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import tempfile
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

from cudastack.contract import ospackages, redact
from cudastack.contract.failures import log_reason, recognise
from cudastack.host.cells.matrix import Cell

# Docker's predefined build args: passed through from the host, never written to image history.
PROXY_ARGS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
LOG_TAIL = 15  # lines of a failed build kept with its error (BuildFailed.tail)
REASON_WINDOW = 200  # lines of a failed build its reason is picked from
OPERATION_TIMEOUT_S = 3600
# The classic builder's log names each stage's start and each step's resulting image.
STAGE_START = re.compile(r"^Step \d+/\d+ : FROM \S+(?:\s+AS\s+(\S+))?", re.IGNORECASE)
STEP_IMAGE = re.compile(r"^ ?---> ([0-9a-f]{12,64})$")


class EngineUnavailable(RuntimeError):
    """No Docker engine answers (not installed, not running, or no permission)."""


class BuildFailed(RuntimeError):
    """A cell's image did not build: a one-line headline (the reason its row and the commands
    show: the log's decisive lines, see ``failures.log_reason``) and the last lines of its log."""

    def __init__(self, headline: str, tail: Sequence[str] = ()) -> None:
        self.headline = headline
        self.tail = list(tail)
        super().__init__(headline + "".join("\n  " + line for line in self.tail))


class BaseUnavailable(BuildFailed):
    """The base image could not be pulled here (offline, no access): a fact about this host."""


class BaseGone(BuildFailed):
    """The registry has no such base image tag (retired, or misspelt): the matrix is wrong."""


# Dockerfile syntax only BuildKit knows. The Docker SDK for Python builds with the classic
# builder, which fails on these late (at their step) with advice to enable BuildKit that
# cannot help here; they are refused before anything is built.
_BUILDKIT_FLAGS = {
    "RUN": ("--mount", "--network", "--security"),
    "COPY": ("--link", "--chmod", "--parents", "--exclude"),
    "ADD": ("--link", "--chmod", "--checksum", "--keep-git-dir", "--exclude"),
}
_HEREDOC = re.compile(r"<<-?\s*[\"']?[A-Za-z_][A-Za-z0-9_]*")


def _is_flag(word: str) -> bool:
    return word.startswith("--")


def buildkit_only(dockerfile_text: str) -> str:
    """The first use of BuildKit-only syntax in a Dockerfile, as "line N: what", or ''.

    Instructions are read as the builder reads them: comment lines skipped, lines ending in a
    backslash joined to the next. Looked for: RUN --mount / --network / --security, COPY and
    ADD flags the classic builder lacks, and heredocs (``RUN <<EOF``, ``COPY <<EOF /f``)."""
    start = 0
    parts: list[str] = []
    for number, line in enumerate(dockerfile_text.splitlines(), 1):
        if not parts:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            start = number
        parts.append(line.rstrip())
        if parts[-1].endswith("\\"):
            parts[-1] = parts[-1][:-1]
            continue
        instruction, parts = " ".join(parts).split(), []
        keyword = instruction[0].upper()
        # The instruction's own flags come before its command or sources.
        flags = [w.split("=")[0] for w in itertools.takewhile(_is_flag, instruction[1:])]
        for flag in _BUILDKIT_FLAGS.get(keyword, ()):
            if flag in flags:
                return f"line {start}: {keyword} {flag}"
        if keyword in _BUILDKIT_FLAGS and _HEREDOC.search(" ".join(instruction[1:])):
            return f"line {start}: a heredoc in {keyword}"
    return ""


def connect(timeout: int = 10) -> Any:
    """A Docker client for the engine DOCKER_HOST names (or the local socket), checked by ping."""
    try:
        from docker.errors import DockerException

        import docker
    except ImportError as exc:  # pragma: no cover - docker is a host dependency
        raise EngineUnavailable(f"the docker package is not installed: {exc}") from None
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except DockerException as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EngineUnavailable(f"no Docker engine reachable ({reason})") from None
    # A short timeout tells a dead engine quickly; loading, saving or pushing a 10 GB image
    # then needs a long one.
    client.api.timeout = OPERATION_TIMEOUT_S
    return client


def exists(client: Any, tag: str) -> bool:
    from docker.errors import ImageNotFound

    try:
        client.images.get(tag)
    except ImageNotFound:
        return False
    return True


def config_env(client: Any, ref: str) -> Optional[list]:
    """An image's configured environment (``KEY=VALUE`` items) if it is here; never pulls."""
    from docker.errors import ImageNotFound

    try:
        image = client.images.get(ref)
    except ImageNotFound:
        return None
    return list((image.attrs.get("Config") or {}).get("Env") or [])


def identity(client: Any, tag: str) -> str:
    """The image's registry digest once pushed or pulled, else its local ID (moby#22011)."""
    image = client.images.get(tag)
    repo_digests = image.attrs.get("RepoDigests") or []
    return str(repo_digests[0].split("@", 1)[1] if repo_digests else image.id)


def apt_installed(client: Any, tag: str) -> dict[str, str]:
    """The OS packages the image's build installed or changed with apt, name -> version (read
    from the file its Dockerfile wrote); empty for an image built before it did."""
    from docker.errors import ContainerError

    try:
        # No entrypoint: nvidia/cuda's prints a banner on stdout before the command's output.
        text = client.containers.run(
            tag,
            ["cat", ospackages.APT_INSTALLED],
            entrypoint=[],
            remove=True,
            stderr=False,
            network_mode="none",
        )
    except ContainerError:  # no such file: an older Dockerfile
        return {}
    found = ospackages.parse(text.decode("utf-8", errors="replace"))
    return {
        name: version for name, version in found.items() if not ospackages.bad_pin(name, version)
    }


def make_context(
    cell: Cell,
    dockerfile: Path,
    locks_dir: Path,
    wheelhouse: Optional[Path],
    ca_file: Optional[Path],
) -> Path:
    """A build context holding the Dockerfile and the build-only inputs (removed by the caller).

    Wheels are hard-linked where the file system allows, so an offline build of a large
    wheelhouse costs no copy on disk.
    """
    ctx = Path(tempfile.mkdtemp(prefix=f"cudastack-build-{cell.name}-"))
    inputs = ctx / "inputs"
    (inputs / "wheelhouse").mkdir(parents=True)
    shutil.copy(dockerfile, ctx / "Dockerfile")
    if wheelhouse is not None:
        for wheel in sorted(wheelhouse.iterdir()):
            if wheel.is_file():
                target = inputs / "wheelhouse" / wheel.name
                try:
                    os.link(wheel, target)
                except OSError:
                    shutil.copy(wheel, target)
    lock = cell.lock_path(locks_dir)
    (inputs / "lock.txt").write_bytes(lock.read_bytes() if lock.is_file() else b"")
    (inputs / "ca.crt").write_bytes(ca_file.read_bytes() if ca_file else b"")
    # COPY keeps a file's mode: under a run's umask (0077) the lock the image keeps would be
    # root's alone, unreadable by the uid a cell runs as, and the image would differ by umask.
    # (The context folder itself stays mkdtemp's 0700 on this host.)
    (inputs / "lock.txt").chmod(0o644)
    return ctx


def build(
    client: Any,
    cell: Cell,
    tag: str,
    inputs_hash: str,
    context: Path,
    on_line: Callable[[str], None],
    unhashed_args: Optional[dict[str, str]] = None,
) -> str:
    """Build with the classic builder, streaming every log line; returns the image ID.
    ``unhashed_args`` are build args outside the cell's inputs hash, so outside its tag: the
    OS package pins of `reproduce --rebuild` make the same cell as the build they came from
    (the recorded tag), not a new one."""
    from docker.errors import APIError

    args = {**cell.build_args(), **(unhashed_args or {}), "INPUTS_HASH": inputs_hash}
    args.update({k: os.environ[k] for k in PROXY_ARGS if k in os.environ})
    # Every line goes to build.log, the console and a failure's reason: pip, apt and the engine
    # may print a proxy URL with its password, or a token a variable here holds.
    secrets = redact.secret_values(os.environ)
    recent: deque = deque(maxlen=REASON_WINDOW)
    image_id = ""
    stage, builder_image = "", ""
    try:
        stream = client.api.build(
            path=str(context),
            tag=tag,
            buildargs=args,
            decode=True,
            rm=True,
            forcerm=True,
            labels={"dev.cudastack.cell": cell.name},
        )
        for chunk in stream:
            text = chunk.get("stream") or chunk.get("status") or ""
            for line in text.splitlines():
                if line.strip():
                    if started := STAGE_START.match(line):
                        stage = started.group(1) or ""
                    elif (step := STEP_IMAGE.match(line)) and stage == "builder":
                        builder_image = step.group(1)
                    line = redact.text(line, secrets)
                    recent.append(line)
                    on_line(line)
            if "error" in chunk:
                error = redact.text(str(chunk["error"]).strip(), secrets)
                at_from = bool(recent) and " : FROM " in recent[-1]  # failed pulling the base
                recent.append(error)
                on_line(error)
                if at_from:
                    reason, known = log_reason([error]), recognise(error)
                    if known is not None and known.name == "manifest":  # no such tag
                        raise BaseGone(f"base image {cell.base_image} does not exist: {reason}")
                    raise BaseUnavailable(
                        f"base image {cell.base_image} cannot be pulled here: {reason}"
                    )
                raise _failed(cell, recent)
            image_id = chunk.get("aux", {}).get("ID", image_id)
    except APIError as exc:
        recent.append(redact.text(str(exc.explanation or exc), secrets))
        raise _failed(cell, recent) from None
    finally:
        # The builder stage (wheels, CA, lock) stays behind as an untagged image, after a
        # success and after a failure alike: remove this build's, by the ID its log named (its
        # untagged parents go with it). Not a prune by label: that would take the builder stage
        # of another build running on the same engine before its final stage copies from it.
        if builder_image:
            with contextlib.suppress(APIError):  # best effort: gone already, or in use
                client.images.remove(builder_image)
    return image_id or str(client.images.get(tag).id)


def _failed(cell: Cell, lines: Sequence[str]) -> BuildFailed:
    """The build's failure: its reason from the log's decisive lines (the whole log is in the
    cell's build.log), and the log's last lines."""
    return BuildFailed(f"build of {cell.name} failed: {log_reason(lines)}", list(lines)[-LOG_TAIL:])
