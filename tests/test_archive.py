"""The export archive without an engine: streamed layout, hash checks, cuts and a full disk.

A stand-in for the Docker SDK's image object streams bytes the way `image.save()` does; the
real engine round trip is in tests/docker/test_handoff.py.
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from test_atomic import kill_mid_write

from cudastack.host.cells import handoff
from cudastack.host.cells.matrix import Cell

# Uneven chunks, as an engine's HTTP stream gives them, none a multiple of the tar block.
CHUNKS = [bytes([i % 251]) * (300_001 + 7_919 * i) for i in range(9)]
IMAGE_BYTES = b"".join(CHUNKS)


class StandInImage:
    id = "sha256:" + "ab" * 32

    def __init__(self, fail_after: int | None = None) -> None:
        self.fail_after = fail_after
        self.labels = {"dev.cudastack.cell": "c"}

    def save(self, named: bool = True):
        for i, chunk in enumerate(CHUNKS):
            if i == self.fail_after:
                raise OSError(errno.ENOSPC, "No space left on device")
            yield chunk


class StandInEngine:
    def __init__(self, image: StandInImage) -> None:
        self.image = image
        self.loaded: list[bytes] = []
        self.images = self

    def get(self, tag: str) -> StandInImage:
        return self.image

    def load(self, stream) -> list:
        self.loaded.append(stream.read())
        return [self.image]


def _cell() -> Cell:
    return Cell(name="c", base_image="example/base:1", torch="2.9.1", index="cpu", python="3.11")


def _export(tmp_path: Path, image: StandInImage) -> Path:
    out = tmp_path / "c.tar"
    handoff.export(StandInEngine(image), _cell(), "cudastack/c:1", "torch==2.9.1\n", out)
    return out


def test_the_image_streams_into_the_archive_and_loads_back(tmp_path):
    out = _export(tmp_path, StandInImage())
    assert [p.name for p in tmp_path.iterdir()] == ["c.tar"]  # no partial file left
    with tarfile.open(out) as tar:
        assert tar.getnames() == ["image.tar", "manifest.json", "lock.txt"]
        assert tar.extractfile("image.tar").read() == IMAGE_BYTES  # type: ignore[union-attr]
    if shutil.which("tar"):  # GNU tar reads the header written after the data, too
        listing = subprocess.run(["tar", "tvf", str(out)], capture_output=True, text=True)
        assert listing.returncode == 0 and str(len(IMAGE_BYTES)) in listing.stdout
    engine = StandInEngine(StandInImage())
    manifest = handoff.import_archive(engine, out)
    assert manifest["image_sha256"] == hashlib.sha256(IMAGE_BYTES).hexdigest()
    assert manifest["lock_text"] == "torch==2.9.1\n"
    assert engine.loaded == [IMAGE_BYTES]


@pytest.mark.parametrize("where", ["image data", "manifest header", "lock data"])
def test_a_cut_archive_is_refused_and_nothing_loads(tmp_path, where):
    out = _export(tmp_path, StandInImage())
    with tarfile.open(out) as tar:
        cut = {
            "image data": tar.getmember("image.tar").offset_data + len(IMAGE_BYTES) // 2,
            "manifest header": tar.getmember("manifest.json").offset + 100,
            "lock data": tar.getmember("lock.txt").offset_data + 3,
        }[where]
    with open(out, "r+b") as f:
        f.truncate(cut)
    engine = StandInEngine(StandInImage())
    with pytest.raises(handoff.HandoffError, match="is truncated or not a tar archive"):
        handoff.import_archive(engine, out)
    assert engine.loaded == []


def test_a_disk_that_fills_during_the_export_leaves_nothing(tmp_path):
    with pytest.raises(handoff.HandoffError) as caught:
        _export(tmp_path, StandInImage(fail_after=4))
    assert str(caught.value) == (
        f"could not write {tmp_path / 'c.tar'}: No space left on device; nothing was written"
    )
    assert list(tmp_path.iterdir()) == []


def _flip(path: Path, offset: int) -> None:
    """Change one byte in place: same size, so only a hash can tell."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x01]))  # ASCII stays ASCII: only the check can refuse it


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("image.tar", "the image does not match its manifest's sha256"),
        ("lock.txt", "lock.txt does not match its manifest's sha256"),
        ("image_sha256", "the image does not match its manifest's sha256"),
        ("lock_sha256", "lock.txt does not match its manifest's sha256"),
    ],
)
def test_a_same_size_change_fails_its_sha_check_and_nothing_loads(tmp_path, where, message):
    out = _export(tmp_path, StandInImage())
    size = out.stat().st_size
    with tarfile.open(out) as tar:
        if where in ("image.tar", "lock.txt"):  # a byte of the member's data
            member = tar.getmember(where)
            offset = member.offset_data + member.size // 2
        else:  # a hex digit of the hash the manifest records
            manifest = tar.getmember("manifest.json")
            data = tar.extractfile(manifest).read()  # type: ignore[union-attr]
            recorded = json.loads(data)[where]
            offset = manifest.offset_data + data.index(recorded.encode()) + 10
    _flip(out, offset)
    assert out.stat().st_size == size
    engine = StandInEngine(StandInImage())
    with pytest.raises(handoff.HandoffError, match=re.escape(message)):
        handoff.import_archive(engine, out)
    assert engine.loaded == []


# Streams 1 MB of image into the export, says so, then waits to be killed before it could finish.
KILLED_MID_EXPORT = """
import sys, time
from pathlib import Path
from cudastack.host.cells import handoff
from cudastack.host.cells.matrix import Cell

class Image:
    id, labels = "sha256:" + "ab" * 32, {}

    def save(self, named=True):
        yield b"i" * 1_000_000
        print("half written", flush=True)
        time.sleep(60)
        yield b"i"

class Engine:
    images = property(lambda self: self)

    def get(self, tag):
        return Image()

cell = Cell(name="c", base_image="example/base:1", torch="2.9.1", index="cpu", python="3.11")
handoff.export(Engine(), cell, "cudastack/c:1", "torch==2.9.1\\n", Path(sys.argv[1]))
"""


def test_an_export_killed_mid_write_leaves_the_old_archive(tmp_path):
    out = _export(tmp_path, StandInImage())
    old = out.read_bytes()
    kill_mid_write(KILLED_MID_EXPORT, str(out))
    assert out.read_bytes() == old
    engine = StandInEngine(StandInImage())
    handoff.import_archive(engine, out)
    assert engine.loaded == [IMAGE_BYTES]


class NamedImageEngine(StandInEngine):
    """An engine that knows one tag, and saves the image's tags only when asked to."""

    TAG = "cudastack/c:1"

    def get(self, tag: str) -> StandInImage:
        if tag != self.TAG:
            raise KeyError(f"no such image: {tag}")
        image = self.image
        plain_save = image.save

        def save(named: bool = False):
            # `docker save` without its name: the loaded image would come back untagged.
            if named is not True:
                yield b"untagged"
                return
            yield from plain_save()

        image.save = save  # type: ignore[method-assign]
        return image


def test_the_manifest_records_the_image_its_lock_and_the_runs_files(tmp_path):
    out = tmp_path / "c.tar"
    lock = "torch==2.9.1\n"
    run = {"cell.json": b'{"cell": "c"}', "env.json": b'{"torch": "2.9.1"}'}
    engine = NamedImageEngine(StandInImage())
    handoff.export(engine, _cell(), engine.TAG, lock, out, run_files=run)
    # Oracle: the sha256 of the bytes this test handed over, by hashlib.
    expected = {
        "format": 1,
        "cell": "c",
        "tag": "cudastack/c:1",
        "image_id": "sha256:" + "ab" * 32,
        "image_sha256": hashlib.sha256(IMAGE_BYTES).hexdigest(),
        "lock_sha256": hashlib.sha256(lock.encode()).hexdigest(),
        "labels": {"dev.cudastack.cell": "c"},
        "run_sha256": {n: hashlib.sha256(d).hexdigest() for n, d in run.items()},
    }
    with tarfile.open(out) as tar:
        raw = tar.extractfile("manifest.json").read().decode()  # type: ignore[union-attr]
        assert json.loads(raw) == expected
        assert raw.startswith('{\n  "format": 1,\n  "cell": "c",')  # indented for a reader
        assert tar.getnames() == [
            "image.tar",
            "manifest.json",
            "lock.txt",
            *(f"run/{n}" for n in run),
        ]
        assert tar.extractfile("run/env.json").read() == run["env.json"]  # type: ignore[union-attr]
        members = tar.getmembers()
        assert {m.mode for m in members} == {0o644}  # unpacked as rw-r--r--
    # Every member, the streamed image's and the small ones, is a GNU tar header ("ustar  \0").
    data = out.read_bytes()
    assert {data[m.offset + 257 : m.offset + 265] for m in members} == {b"ustar  \x00"}


def test_an_archive_without_a_manifest_is_not_an_export(tmp_path):
    out = tmp_path / "other.tar"
    with tarfile.open(out, "w") as tar:
        tar.add(__file__, arcname="lock.txt")
    with pytest.raises(
        handoff.HandoffError, match=r"^not a cudastack export: it has no manifest\.json$"
    ):
        handoff.import_archive(StandInEngine(StandInImage()), out)


def test_an_engine_that_loads_another_image_is_named_in_the_error(tmp_path):
    out = _export(tmp_path, StandInImage())
    other = StandInImage()
    other.id = "sha256:" + "cd" * 32
    engine = StandInEngine(StandInImage())
    engine.load = lambda stream: [other]  # type: ignore[method-assign]
    expected = f"{out}: loaded image ['sha256:{'cd' * 32}'] is not sha256:{'ab' * 32}"
    with pytest.raises(handoff.HandoffError) as err:
        handoff.import_archive(engine, out)
    assert str(err.value) == expected


def test_lock_text_is_the_cells_lock_file_or_empty_without_one(tmp_path):
    cell = _cell()
    assert handoff.lock_text(tmp_path, cell) == ""
    (tmp_path / "c.txt").write_text("torch==2.9.1 --hash=sha256:00\n", encoding="utf-8")
    assert handoff.lock_text(tmp_path, cell) == "torch==2.9.1 --hash=sha256:00\n"
