"""Hand a cell to a teammate: push to a registry, export to one archive, import it back."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, Optional

from cudastack.contract import runfolder
from cudastack.contract.errors import CudastackError
from cudastack.host.cells import reproduce
from cudastack.host.cells.matrix import Cell

EXPORT_FORMAT = 1
CHUNK = 1 << 20
RUN_DIR = "run"  # export --run: the run's records of the cell, under run/ in the archive
RUN_FILES = (
    runfolder.INPUTS,
    runfolder.ENV,
)  # its recorded inputs and its environment's fingerprint


class HandoffError(CudastackError):
    """A push, export or import that cannot go on; nothing was left half-done."""


def pushed_record(locks_dir: Path, cell: Cell) -> Path:
    """Where the pushed image reference is kept, beside the lock (and outside its hash)."""
    return locks_dir / f"{cell.name}.pushed"


def push(client: Any, tag: str, registry: str) -> str:
    """Push the image as REGISTRY/<cell>:<hash>; returns ``registry/repo@sha256:...``."""
    repo_tag = f"{registry.rstrip('/')}/{tag.split('/', 1)[1]}"
    repo, _, version = repo_tag.rpartition(":")
    from docker.errors import APIError

    image = client.images.get(tag)
    image.tag(repo, version)
    try:
        try:
            for chunk in client.images.push(repo, tag=version, stream=True, decode=True):
                if "error" in chunk:
                    raise HandoffError(f"push to {registry} refused: {str(chunk['error']).strip()}")
        except APIError as exc:
            raise HandoffError(f"push to {registry} refused: {exc.explanation or exc}") from None
    except HandoffError:
        client.images.remove(repo_tag)  # leave no tag behind that points at nothing pushed
        raise
    image.reload()
    for digest in image.attrs.get("RepoDigests") or []:
        if digest.startswith(repo + "@"):
            return str(digest)
    raise HandoffError(f"push to {registry} finished but the engine reports no digest for {repo}")


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(time.time()), 0o644
    return info


def _stream_member(f: BinaryIO, name: str, blocks: Iterable[bytes]) -> str:
    """Write one tar member whose size is known only at its end; returns its sha256.

    The image goes straight into the archive: a docker save into a temporary file first
    would need twice the image's size on disk, and CUDA images run to 10 GB and more. The
    header's 512 bytes are reserved, then written once the size is known (GNU format
    encodes sizes past 8 GiB in the same block).
    """
    start = f.tell()
    f.write(bytes(tarfile.BLOCKSIZE))
    digest, size = hashlib.sha256(), 0
    for block in blocks:
        f.write(block)
        digest.update(block)
        size += len(block)
    f.write(bytes(-size % tarfile.BLOCKSIZE))
    end = f.tell()
    header = _tar_info(name, size).tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    assert len(header) == tarfile.BLOCKSIZE, "a member name this long needs a longer header"
    f.seek(start)
    f.write(header)
    f.seek(end)
    return digest.hexdigest()


def export(
    client: Any,
    cell: Cell,
    tag: str,
    lock_text: str,
    out: Path,
    run_files: Optional[dict[str, bytes]] = None,
) -> dict:
    """One tar: the image (docker save), then manifest.json and lock.txt, written atomically.
    ``run_files`` (export --run) adds a run's records of the cell, run/cell.json and
    run/env.json, hashed in the manifest: what `reproduce` compares against."""
    image = client.images.get(tag)
    # One partial file per process, created exclusively: two exports to one name never write
    # into, or delete, each other's file.
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        with open(partial, "xb") as f:
            image_sha256 = _stream_member(f, "image.tar", image.save(named=True))
            manifest = {
                "format": EXPORT_FORMAT,
                "cell": cell.name,
                "tag": tag,
                "image_id": image.id,
                "image_sha256": image_sha256,
                "lock_sha256": hashlib.sha256(lock_text.encode()).hexdigest(),
                "labels": image.labels,
            }
            run = run_files or {}
            if run:
                manifest["run_sha256"] = {n: hashlib.sha256(d).hexdigest() for n, d in run.items()}
            # tarfile starts at the file's position: the small members follow the image.
            with tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for name, data in (
                    ("manifest.json", json.dumps(manifest, indent=2).encode()),
                    ("lock.txt", lock_text.encode()),
                    *((f"{RUN_DIR}/{n}", d) for n, d in run.items()),
                ):
                    tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))
        os.replace(partial, out)
    except OSError as exc:  # a full disk, most likely: an image runs to gigabytes
        message = f"could not write {out}: {exc.strerror or exc}; nothing was written"
        raise HandoffError(message) from None
    finally:
        partial.unlink(missing_ok=True)
    return manifest


def _member(tar: tarfile.TarFile, name: str) -> Any:
    try:
        return tar.getmember(name)
    except KeyError:
        raise HandoffError(f"not a cudastack export: it has no {name}") from None


def _read(path: Path, hash_image: bool) -> tuple[dict, bytes, dict[str, bytes]]:
    """(manifest, lock, run files) of a whole archive whose hashes all match (the image's only
    when ``hash_image``: a gigabyte read), else HandoffError."""
    run: dict[str, bytes] = {}
    digest = hashlib.sha256()
    try:
        with tarfile.open(path, "r:") as tar:
            # tarfile itself raises on a file cut inside a member's data, but reads one cut
            # inside a header as a shorter archive. A whole one ends in two zero blocks after
            # its last member; tar.offset is where that end begins.
            tar.getmembers()
            if tar.offset + 2 * tarfile.BLOCKSIZE > path.stat().st_size:
                raise tarfile.ReadError("the file ends before the archive's end blocks")
            manifest = json.loads(tar.extractfile(_member(tar, "manifest.json")).read())  # type: ignore[union-attr]
            lock = tar.extractfile(_member(tar, "lock.txt")).read()  # type: ignore[union-attr]
            for name in manifest.get("run_sha256") or {}:
                run[name] = tar.extractfile(_member(tar, f"{RUN_DIR}/{name}")).read()  # type: ignore[union-attr]
            if hash_image:
                image = tar.extractfile(_member(tar, "image.tar"))
                assert image is not None
                for block in iter(lambda: image.read(CHUNK), b""):
                    digest.update(block)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise HandoffError(f"{path} is truncated or not a tar archive ({exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HandoffError(f"{path}: its manifest.json is not valid JSON") from None
    if manifest.get("format") != EXPORT_FORMAT:
        raise HandoffError(f"{path}: export format {manifest.get('format')} is not supported")
    if hash_image and digest.hexdigest() != manifest["image_sha256"]:
        raise HandoffError(
            f"{path}: the image does not match its manifest's sha256 (damaged or "
            "tampered with); nothing was loaded"
        )
    if hashlib.sha256(lock).hexdigest() != manifest["lock_sha256"]:
        raise HandoffError(f"{path}: lock.txt does not match its manifest's sha256; nothing loaded")
    for name, data in run.items():
        if hashlib.sha256(data).hexdigest() != manifest["run_sha256"][name]:
            raise HandoffError(
                f"{path}: {RUN_DIR}/{name} does not match its manifest's sha256; nothing loaded"
            )
    return manifest, lock, run


def import_archive(client: Any, path: Path) -> dict:
    """Verify the archive's hashes first, then load it: a damaged archive loads nothing."""
    manifest, lock, _ = _read(path, hash_image=True)
    with tarfile.open(path, "r:") as tar:
        stream = tar.extractfile("image.tar")
        loaded = client.images.load(stream)
    ids = {img.id for img in loaded}
    if manifest["image_id"] not in ids:
        raise HandoffError(f"{path}: loaded image {sorted(ids)} is not {manifest['image_id']}")
    manifest["lock_text"] = lock.decode()
    return manifest


class RunRecords(NamedTuple):
    """What an archive made with ``export --run`` carries besides the image."""

    manifest: dict  # the archive's manifest.json
    record: dict  # the cell's recorded build inputs (images.json's entry)
    env: dict  # the run's env.json for the cell


def run_records(path: Path) -> RunRecords:
    """The run records of an archive made with ``export --run``, hashes checked: all
    `reproduce` needs besides the image."""
    manifest, _, run = _read(path, hash_image=False)
    if set(run) != set(RUN_FILES):
        raise HandoffError(
            f"{path} carries no run's records of its cell; export it with --run RUN "
            "(`cudastack export CELL --run RUN -o FILE`) to reproduce from the archive"
        )
    try:
        record, env = (json.loads(run[name]) for name in RUN_FILES)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HandoffError(f"{path}: its run records are not valid JSON") from None
    if not isinstance(record, dict) or record.get("tag") != manifest["tag"]:
        raise HandoffError(f"{path}: its run records do not describe its image {manifest['tag']}")
    return RunRecords(manifest, reproduce.checked_record(record, str(path)), env)


def lock_text(locks_dir: Path, cell: Cell) -> str:
    path = cell.lock_path(locks_dir)
    return path.read_text(encoding="utf-8") if path.is_file() else ""
