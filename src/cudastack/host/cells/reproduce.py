"""`cudastack reproduce`: rebuild a past run's cells from their recorded inputs, then verify."""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

from cudastack.contract import runfolder
from cudastack.contract.errors import CudastackError
from cudastack.host.cells import images
from cudastack.host.cells.matrix import Cell, checked_cell
from cudastack.host.run.container import base_environment, harness_volume, invoking_user


class ReproduceError(CudastackError):
    """A cell's image cannot be had the way its records say; nothing was changed."""


def record_inputs(
    cell_dir: Path,
    cell: Cell,
    dockerfile: Path,
    lock_text: str,
    tag: str,
    image_ref: str,
    inputs_hash: str,
) -> None:
    """Everything needed to rebuild this cell's image: Dockerfile text, build args, lock."""
    data = {
        "cell": dataclasses.asdict(cell),
        "build_args": cell.build_args(),
        "tag": tag,
        "image": image_ref,
        "inputs_hash": inputs_hash,
        "dockerfile": dockerfile.read_text(encoding="utf-8"),
        "lock": lock_text,
    }
    runfolder.write_json(cell_dir / runfolder.INPUTS, data)


# An image tag as record_inputs writes it: what reaches the engine's API as a name.
_TAG = re.compile(r"[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?")


def checked_record(data: Any, where: str) -> dict:
    """``data`` if it is a cell's recorded inputs as ``record_inputs`` writes them: a cell
    whose fields pass the matrix's checks (a record edited since, or not cudastack's, must not
    reach a Dockerfile ARG), an image tag, the Dockerfile and lock texts. Raises ReproduceError
    (or the matrix's MatrixError for a cell field) naming ``where``."""
    if not isinstance(data, dict) or not isinstance(data.get("cell"), dict):
        raise ReproduceError(f"{where} holds no recorded cell; was it written by cudastack?")
    checked_cell(_cell_fields(data), f"{where}: recorded cell")
    tag = data.get("tag")
    if not isinstance(tag, str) or not _TAG.fullmatch(tag):
        raise ReproduceError(f"{where}: the recorded image tag {tag!r} is not one")
    for key in ("dockerfile", "lock"):
        if not isinstance(data.get(key), str):
            raise ReproduceError(f"{where}: the recorded {key} is missing or not text")
    return data


def cell_from(record: dict) -> Cell:
    """The Cell of a record that ``checked_record`` passed."""
    return checked_cell(_cell_fields(record), "recorded cell")


def _cell_fields(record: dict) -> dict:
    """The recorded cell's fields as a matrix would give them: a field the matrix left out is
    recorded as its default (''), which the matrix's checks read as left out again."""
    return {k: v for k, v in record["cell"].items() if v != ""}


class RebuildInputs(NamedTuple):
    dockerfile: Path
    locks_dir: Path  # holds the cell's lock when it had one


def rebuild_inputs(record: dict, folder: Path) -> RebuildInputs:
    """Write the recorded Dockerfile and lock into ``folder``."""
    dockerfile = folder / "Dockerfile"
    dockerfile.write_text(record["dockerfile"], encoding="utf-8")
    locks = folder / "locks"
    locks.mkdir()
    if record["lock"]:
        (locks / f"{record['cell']['name']}.txt").write_text(record["lock"], encoding="utf-8")
    return RebuildInputs(dockerfile, locks)


def obtain(
    client: Any,
    record: dict,
    pushed_ref: str,
    rebuild: bool,
    build: Callable[[Cell, Path, Path], str],
    load: Optional[Callable[[], object]] = None,
) -> str:
    """How the image came to be here: 'present', 'imported' (by ``load``, from the archive
    reproduce was given), 'pulled' or 'rebuilt'."""
    tag = record["tag"]
    if images.exists(client, tag) and not rebuild:
        return "present"
    if load is not None and not rebuild:
        load()
        if not images.exists(client, tag):
            raise ReproduceError(f"cell {record['cell']['name']}: the archive did not hold {tag}")
        return "imported"
    if pushed_ref and not rebuild:
        from docker.errors import APIError

        try:
            image = client.images.pull(pushed_ref)  # by digest: exactly the bytes pushed
        except APIError as exc:
            cause = str(exc.explanation or exc).strip().splitlines()[0]
            raise ReproduceError(
                f"cell {record['cell']['name']}: cannot pull its recorded digest {pushed_ref} "
                f"({cause}); use --rebuild to build it from the recorded inputs, or import an "
                "export of it"
            ) from None
        image.tag(*tag.rsplit(":", 1))
        return "pulled"
    if images.exists(client, tag):
        client.images.remove(tag, force=True)
    with tempfile.TemporaryDirectory(prefix="cudastack-reproduce-") as tmp:
        dockerfile, locks = rebuild_inputs(record, Path(tmp))
        cell = cell_from(record)
        built = build(cell, dockerfile, locks)
    if built != tag:
        raise images.BuildFailed(f"rebuilt {cell.name} as {built}, not {tag}: its inputs changed")
    return "rebuilt"


def probe(client: Any, tag: str) -> dict:
    """The stack inside the image as `python -m cudastack.environment.envinfo` sees it."""
    out = client.containers.run(
        tag,
        ["python", "-m", "cudastack.environment.envinfo"],
        remove=True,
        user=invoking_user(),
        environment=base_environment(),
        volumes=harness_volume(),
        stderr=False,
    )
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


def diff(original: dict, now: dict) -> list[str]:
    """Differences in installed packages, torch / CUDA runtime / cuDNN / NCCL, and lock."""
    lines = []
    for key in ("version", "cuda", "cudnn", "nccl"):
        a, b = original["torch"].get(key, ""), now["torch"].get(key, "")
        if a != b:
            lines.append(f"torch {key}: {a or '-'} -> {b or '-'}")
    before, after = original.get("installed", {}), now.get("installed", {})
    for name in sorted(set(before) | set(after)):
        if before.get(name) != after.get(name):
            lines.append(f"{name}: {before.get(name, '(absent)')} -> {after.get(name, '(absent)')}")
    old_lock = original.get("lock", {}).get("hash", "")
    if old_lock != now.get("lock_hash", ""):
        lines.append(f"lock: {old_lock or '(none)'} -> {now.get('lock_hash') or '(none)'}")
    return lines
