"""`cudastack reproduce`: rebuild a past run's cells from their recorded inputs, then verify."""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

from cudastack.contract import ospackages, runfolder
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
    base: str = "",
) -> None:
    """Everything needed to rebuild this cell's image: Dockerfile text, build args, lock; and
    the identity of the base image it was built on (``base_identity``; '' where unknown)."""
    data = {
        "cell": dataclasses.asdict(cell),
        "build_args": cell.build_args(),
        "tag": tag,
        "image": image_ref,
        "base": base,
        "inputs_hash": inputs_hash,
        "dockerfile": dockerfile.read_text(encoding="utf-8"),
        "lock": lock_text,
    }
    runfolder.write_json(cell_dir / runfolder.INPUTS, data)


def base_identity(client: Any, base_ref: str, image_tag: str) -> str:
    """The identity of the base image ``image_tag`` was built on: its image ID, the sha256 of
    its configuration, the same on every engine that pulled, loaded or imported the same image
    (a registry's manifest digest is not: a plain `docker load` has none, and a multi-platform
    tag has one more). '' when ``base_ref`` is not on this engine, or is no longer the image
    that was built on (its layers are not the first of the image's: the name has moved since)."""
    from docker.errors import ImageNotFound

    try:
        base, image = client.images.get(base_ref), client.images.get(image_tag)
    except ImageNotFound:
        return ""
    layers = list((base.attrs.get("RootFS") or {}).get("Layers") or [])
    built_on = list((image.attrs.get("RootFS") or {}).get("Layers") or [])
    if not layers or built_on[: len(layers)] != layers:
        return ""
    return str(base.id)


def is_recorded_image(client: Any, tag: str, recorded: str) -> bool:
    """Whether the image under ``tag`` is the very one a run recorded (by ID or digest)."""
    return _is_recorded(client.images.get(tag), recorded)


def _is_recorded(image: Any, recorded: str) -> bool:
    """Whether the engine's ``image`` is the one ``recorded`` names: its image ID (the same on
    every engine) or one of its registry digests."""
    digests = {d.split("@", 1)[1] for d in image.attrs.get("RepoDigests") or [] if "@" in d}
    return bool(recorded) and recorded in {image.id, *digests}


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
    recorded as its default (''), which the matrix's checks read as left out again.

    A run recorded before cuDNN pins existed holds ``cudnn`` as the base image's cuDNN
    generation ("8", "9"): a label that never reached the build, dropped here so the record
    still rebuilds as the cell it was."""
    fields = {k: v for k, v in record["cell"].items() if v != ""}
    if isinstance(fields.get("cudnn"), str) and fields["cudnn"].isdigit():
        del fields["cudnn"]
    return fields


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
        recorded = str(record.get("image") or "")
        if recorded and not _is_recorded(image, recorded):
            # The push record is per cell, and a later push of the cell replaced it: tagging
            # that image as this run's would hand every later run of the cell the wrong image.
            raise ReproduceError(
                f"cell {record['cell']['name']}: {pushed_ref} is not the image this run "
                f"measured ({recorded}): the cell was pushed again since; use --rebuild to "
                "build it from the recorded inputs, or import an export of the run"
            )
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


def os_pins(env: dict, where: str) -> str:
    """The OS packages a run's image's build installed (env.json's ``os_packages_built``) as
    the Dockerfile's OS_PACKAGES: ``name=version`` pins, space-separated; '' when none were
    recorded. Raises ReproduceError naming ``where`` for an entry apt would not take as one."""
    built = env.get("os_packages_built") or {}
    if not isinstance(built, dict):
        raise ReproduceError(f"{where}: os_packages_built is not a name -> version table")
    for name, version in sorted(built.items()):
        if ospackages.bad_pin(name, version):
            raise ReproduceError(
                f"{where}: recorded OS package {name!r} = {version!r} is not a Debian package "
                "name and version; was it written by cudastack?"
            )
    return ospackages.as_build_arg(built)


# Differences listed per category before the rest are counted: readable on a terminal.
LISTED = 25
ABSENT = "(absent)"


class Category(NamedTuple):
    """One thing `reproduce` compares: the differences found (one line each), how many items
    compared equal, and a note: the value that agreed, or why it was not compared."""

    name: str
    differences: list[str]
    identical: int
    note: str = ""
    summary: str = ""  # a list's added / removed / changed counts

    @property
    def compared(self) -> bool:
        return not self.note.startswith(NOT_COMPARED)


NOT_COMPARED = "not compared: "


def _value(name: str, before: str, after: str, missing: str = "") -> Category:
    """A single value: agrees, differs, or (``missing`` says why) cannot be compared."""
    if missing:
        return Category(name, [], 0, NOT_COMPARED + missing)
    if before == after:
        return Category(name, [], 1, before or "none")
    return Category(name, [f"{before or '(none)'} -> {after or '(none)'}"], 0)


def _table(name: str, before: dict, after: dict) -> Category:
    """Two name -> version tables: every name added, removed or at another version."""
    lines, counts = [], {"added": 0, "removed": 0, "changed": 0}
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if a != b:
            counts["added" if a is None else "removed" if b is None else "changed"] += 1
            lines.append(f"{key}: {a or ABSENT} -> {b or ABSENT}")
    same = len(set(before) & set(after)) - counts["changed"]
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
    return Category(name, lines, same, summary=summary)


_TABLES = ("OS packages", "pip packages")  # listed one name a line, under their counts
_TORCH = "torch and its libraries"
_LOADED = (("version", "torch"), ("cuda", "CUDA runtime"), ("cudnn", "cuDNN"), ("nccl", "NCCL"))


def compare(original: dict, now: dict, base_before: str, base_now: str) -> list[Category]:
    """``original`` (a run's env.json) against ``now`` (``probe`` of the image), and the base
    image's identity recorded against now's (''s where unknown): base image, Python, OS
    packages, pip packages, torch and the CUDA libraries it loaded, the lock."""
    unknown_base = (
        "the run recorded no base image identity"
        if not base_before
        else "the base image this image was built on is not on this engine"
        if not base_now
        else ""
    )
    torch_before, torch_now = original.get("torch") or {}, now.get("torch") or {}
    loaded = [(label, torch_before.get(k, ""), torch_now.get(k, "")) for k, label in _LOADED]
    # A run from before NCCL was read without a GPU recorded none for a CUDA cell: not
    # recorded, so not compared (cuDNN and the CUDA runtime were always recorded).
    loaded = [(label, a, b) for label, a, b in loaded if a or not b or label != "NCCL"]
    torch_lines = [f"{label}: {a or '-'} -> {b or '-'}" for label, a, b in loaded if a != b]
    shown = ", ".join(f"{label} {a or '-'}" for label, a, _ in loaded)
    same_loaded = sum(a == b for _, a, b in loaded)
    # Not recorded (a run from before they were), or none on either side (a base without
    # dpkg): nothing was compared, which is no "identical".
    os_missing = "os_packages" not in original or not (
        original["os_packages"] or now.get("os_packages")
    )
    return [
        _value("base image", base_before, base_now, unknown_base),
        _value(
            "Python",
            (original.get("python") or {}).get("version", ""),
            (now.get("python") or {}).get("version", ""),
        ),
        Category("OS packages", [], 0, NOT_COMPARED + "the run recorded none")
        if os_missing
        else _table("OS packages", original["os_packages"], now.get("os_packages") or {}),
        _table("pip packages", original.get("installed") or {}, now.get("installed") or {}),
        Category("torch and its libraries", torch_lines, same_loaded, "" if torch_lines else shown),
        _value(
            "lock",
            (original.get("lock") or {}).get("hash", ""),
            now.get("lock_hash", ""),
        ),
    ]


def differences(categories: list[Category]) -> int:
    """How many things differ, all categories together."""
    return sum(len(c.differences) for c in categories)


def status(categories: list[Category]) -> str:
    """The verdict: 'identical environment' only when every category was compared and agreed."""
    n = differences(categories)
    if n:
        return f"{n} difference{'s' if n != 1 else ''}"
    skipped = [c.name for c in categories if not c.compared]
    if skipped:
        return f"no differences in what was compared (not compared: {', '.join(skipped)})"
    return "identical environment"


def report(categories: list[Category], show_identical: bool = False) -> list[str]:
    """The lines to print under a cell's verdict: each category's differences (a long list cut
    at LISTED, the rest counted), then with ``show_identical`` one line per category on what
    compared equal or why it was not compared."""
    lines = []
    for c in categories:
        if not c.differences:
            continue
        if len(c.differences) == 1 and c.name not in _TABLES:
            lines.append(f"{c.name}: {c.differences[0]}")
            continue
        lines.append(f"{c.name}: {c.summary or f'{len(c.differences)} differ'}")
        lines += [f"  {line}" for line in c.differences[:LISTED]]
        if len(c.differences) > LISTED:
            lines.append(f"  … and {len(c.differences) - LISTED} more")
    if show_identical:
        for c in categories:
            if not c.compared:
                lines.append(f"{c.name}: {c.note}")
            elif c.name in _TABLES or c.name == _TORCH:
                lines.append(f"{c.name}: {c.identical} identical")
            elif not c.differences:
                lines.append(f"{c.name}: identical ({c.note})")
    return lines
