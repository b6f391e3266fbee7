"""The lock's pins and hashes, and the build context that carries them, without a network."""

from __future__ import annotations

import base64
import calendar
import functools
import hashlib
import http.server
import os
import re
import shutil
import ssl
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest

from cudastack.host.cells import images, lock
from cudastack.host.cells.matrix import Cell


def _cell(**fields: object) -> Cell:
    base = {
        "name": "cu12.8-torch2.9.1-py3.12",
        "base_image": "example/base:1",
        "torch": "2.9.1",
        "index": "cu128",
        "python": "3.12",
    }
    return Cell(**{**base, **fields})  # type: ignore[arg-type]


def _wheel(
    folder: Path, name: str, version: str, requires: tuple = (), tag: str = "py3-none-any"
) -> Path:
    """A minimal wheel pip accepts: METADATA (with ``requires``), WHEEL and RECORD, no code."""
    dist = f"{name}-{version}.dist-info"
    needs = "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{needs}",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        f"Tag: {tag}\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(zipfile.ZipInfo(path, (2020, 1, 1, 0, 0, 0)), text)
    return wheel


def test_online_requirements_pin_torch_and_torchvision_to_the_cells_variant():
    cell = _cell(torchvision="0.24.1", packages=("numpy==2.1.0", "pillow"))
    assert lock.requirements(cell, offline=False) == [
        "torch==2.9.1+cu128",
        "torchvision==0.24.1+cu128",
        "numpy==2.1.0",
        "pillow",
    ]


def test_offline_requirements_take_the_wheelhouse_versions_as_they_are():
    assert lock.requirements(_cell(), offline=True) == ["torch==2.9.1"]
    assert lock.requirements(_cell(torchvision="0.24.1"), offline=True) == [
        "torch==2.9.1",
        "torchvision==0.24.1",
    ]


def test_a_wheel_file_name_gives_the_normalised_project_name_and_version():
    name = "Typing_Extensions-4.12.2-py3-none-any.whl"
    assert lock._wheel_name_version(name) == ("typing-extensions", "4.12.2")
    assert lock._wheel_name_version("torch-2.9.1+cu128-cp312-cp312-linux_x86_64.whl") == (
        "torch",
        "2.9.1+cu128",
    )


def test_resolve_from_a_wheelhouse_pins_each_wheel_to_its_file_hash(tmp_path):
    house = tmp_path / "wheelhouse"
    house.mkdir()
    torch = _wheel(house, "torch", "2.9.1")
    extra = _wheel(house, "tiny_pkg", "1.0")
    _wheel(house, "unasked", "3.0")  # in the wheelhouse but not required: not locked
    cell = _cell(packages=("tiny-pkg==1.0",))
    lines = lock.resolve(cell, house, None)
    # Oracle: the sha256 of the wheel files as written above, independent of pip's copy.
    assert lines == [
        f"tiny-pkg==1.0 --hash=sha256:{hashlib.sha256(extra.read_bytes()).hexdigest()}",
        f"torch==2.9.1 --hash=sha256:{hashlib.sha256(torch.read_bytes()).hexdigest()}",
    ]


def test_resolve_names_the_cell_and_pips_reason_when_a_package_is_missing(tmp_path):
    house = tmp_path / "wheelhouse"
    house.mkdir()
    _wheel(house, "torch", "2.9.0")  # not the version the cell asks for
    with pytest.raises(lock.LockError) as err:
        lock.resolve(_cell(), house, None)
    message = str(err.value)
    assert message.startswith("cell cu12.8-torch2.9.1-py3.12: cannot resolve its packages: ")
    # pip's own last line follows: its error, not a stand-in text.
    assert message.split(": cannot resolve its packages: ")[1].startswith("ERROR: ")


def _sha(wheel: Path) -> str:
    return hashlib.sha256(wheel.read_bytes()).hexdigest()


def test_a_wheel_published_for_one_manylinux_tag_between_others_is_locked(tmp_path):
    # cuDNN 9.20 for CUDA 13 is published for manylinux_2_27 alone; pip matches --platform
    # values exactly, so the list must hold every tag down from the base's glibc.
    house = tmp_path / "wheelhouse"
    house.mkdir()
    tag = f"py3-none-manylinux_2_27_{os.uname().machine}"
    cudnn = _wheel(house, "nvidia_cudnn_cu13", "9.20.0.48", tag=tag)
    torch = _wheel(house, "torch", "2.13.0", requires=("nvidia-cudnn-cu13==9.20.0.48",))
    cell = _cell(base_image="debian:bookworm", torch="2.13.0", index="cu130", cuda="13.0")
    assert f"manylinux_2_27_{os.uname().machine}" in lock.platforms(cell)
    assert lock.resolve(cell, house, None) == [
        f"nvidia-cudnn-cu13==9.20.0.48 --hash=sha256:{_sha(cudnn)}",
        f"torch==2.13.0 --hash=sha256:{_sha(torch)}",
    ]


def test_a_cudnn_and_nccl_pin_replace_torchs_own_in_the_lock(tmp_path):
    house = tmp_path / "wheelhouse"
    house.mkdir()
    own = ("nvidia-cudnn-cu13==9.20.0.48", "nvidia-nccl-cu13==2.29.7")
    torch = _wheel(house, "torch", "2.13.0", requires=own)
    for name, version in (("nvidia_cudnn_cu13", "9.20.0.48"), ("nvidia_nccl_cu13", "2.29.7")):
        _wheel(house, name, version)
    # The pinned cuDNN needs cuBLAS: installed over torch's with --no-deps, it brings nothing.
    cudnn = _wheel(house, "nvidia_cudnn_cu13", "9.21.1.3", requires=("nvidia-cublas==99",))
    nccl = _wheel(house, "nvidia_nccl_cu13", "2.30.3")
    cell = _cell(torch="2.13.0", index="cu130", cuda="13.0", cudnn="9.21.1.3", nccl="2.30.3")
    lines = lock.resolve(cell, house, None)
    assert lines == [
        f"nvidia-cudnn-cu13==9.21.1.3 --hash=sha256:{_sha(cudnn)}",
        f"nvidia-nccl-cu13==2.30.3 --hash=sha256:{_sha(nccl)}",
        f"torch==2.13.0 --hash=sha256:{_sha(torch)}",
    ]
    out = tmp_path / "locks" / "c.txt"
    lock.write_lock(out, cell, lines)
    assert (
        "nvidia-cudnn-cu13==9.21.1.3 (the cell's pin, over torch's own)"
        in (out.read_text().splitlines()[0])
    )


def test_a_pin_the_wheelhouse_lacks_is_named_by_the_lock(tmp_path):
    house = tmp_path / "wheelhouse"
    house.mkdir()
    _wheel(house, "torch", "2.13.0")
    cell = _cell(torch="2.13.0", index="cu130", cuda="13.0", cudnn="9.99.0.1")
    with pytest.raises(lock.LockError, match=r"nvidia-cudnn-cu13==9\.99\.0\.1"):
        lock.resolve(cell, house, None)


@pytest.fixture
def https_indexes(tmp_path):
    """The PyTorch index and PyPI as a host reaches them: two package folders served over HTTPS
    (directory listings, which pip reads as simple pages) with a self-signed certificate that
    only ``--cert`` makes pip trust. Yields (torch index URL, PyPI URL, folder, certificate)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl makes the test's certificate (CI installs it)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}"
    try:
        yield f"{url}/torch", f"{url}/pypi", root, cert
    finally:
        server.shutdown()
        server.server_close()


def _project(folder: Path, project: str) -> Path:
    """The simple-index folder of ``project``, as pip asks for it (normalised name)."""
    where = folder / project
    where.mkdir(parents=True, exist_ok=True)
    return where


def test_online_resolve_takes_torch_from_its_variant_index_the_rest_and_pins_from_pypi(
    https_indexes, monkeypatch
):
    torch_url, pypi_url, root, cert = https_indexes
    monkeypatch.setattr(lock, "TORCH_INDEX_URL", torch_url)
    monkeypatch.setattr(lock, "PYPI_URL", pypi_url)
    # A host whose requests trust its system bundle (which pip's requests prefers to --cert).
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.setenv(name, ssl.get_default_verify_paths().openssl_cafile)
    own = ("nvidia-cudnn-cu13==9.20.0.48", "tiny-dep")
    # torch only on its variant index (cu130), never on PyPI; what it needs only on PyPI.
    torch = _wheel(_project(root / "torch" / "cu130", "torch"), "torch", "2.13.0+cu130", own)
    _wheel(_project(root / "torch" / "cu126", "torch"), "torch", "2.13.0+cu126", own)
    dep = _wheel(_project(root / "pypi", "tiny-dep"), "tiny_dep", "2.0")
    pkg = _wheel(_project(root / "pypi", "tiny-pkg"), "tiny_pkg", "1.0")
    cudnn = _project(root / "pypi", "nvidia-cudnn-cu13")
    _wheel(cudnn, "nvidia_cudnn_cu13", "9.20.0.48")
    pin = _wheel(cudnn, "nvidia_cudnn_cu13", "9.21.1.3")
    cell = _cell(
        torch="2.13.0", index="cu130", cuda="13.0", cudnn="9.21.1.3", packages=("tiny-pkg==1.0",)
    )
    assert lock.resolve(cell, None, cert) == [
        f"nvidia-cudnn-cu13==9.21.1.3 --hash=sha256:{_sha(pin)}",
        f"tiny-dep==2.0 --hash=sha256:{_sha(dep)}",
        f"tiny-pkg==1.0 --hash=sha256:{_sha(pkg)}",
        f"torch==2.13.0+cu130 --hash=sha256:{_sha(torch)}",
    ]
    # Without the certificate the same indexes are refused: --cert is what made pip trust them.
    with pytest.raises(lock.LockError, match="cannot resolve its packages"):
        lock.resolve(cell, None, None)


@pytest.fixture
def context_inputs(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_bytes(b"FROM scratch\nARG CELL_NAME\n")
    locks = tmp_path / "locks"
    locks.mkdir()
    house = tmp_path / "wheelhouse"
    (house / "not-a-wheel-dir").mkdir(parents=True)
    (house / "b-1.0-py3-none-any.whl").write_bytes(b"wheel b")
    (house / "a-1.0-py3-none-any.whl").write_bytes(b"wheel a")
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    return dockerfile, locks, house, ca


def _tree(ctx: Path) -> dict[str, bytes]:
    return {str(p.relative_to(ctx)): p.read_bytes() for p in sorted(ctx.rglob("*")) if p.is_file()}


def test_the_build_context_holds_the_dockerfile_lock_wheels_and_certificate(context_inputs):
    dockerfile, locks, house, ca = context_inputs
    cell = _cell()
    (locks / f"{cell.name}.txt").write_bytes(b"torch==2.9.1 --hash=sha256:00\n")
    ctx = images.make_context(cell, dockerfile, locks, house, ca)
    try:
        assert ctx.name.startswith(f"cudastack-build-{cell.name}-")
        assert _tree(ctx) == {
            "Dockerfile": b"FROM scratch\nARG CELL_NAME\n",
            "inputs/ca.crt": b"-----BEGIN CERTIFICATE-----\n",
            "inputs/lock.txt": b"torch==2.9.1 --hash=sha256:00\n",
            "inputs/wheelhouse/a-1.0-py3-none-any.whl": b"wheel a",
            "inputs/wheelhouse/b-1.0-py3-none-any.whl": b"wheel b",
        }
        # Hard-linked, not copied: a large wheelhouse costs no disk.
        wheel = ctx / "inputs" / "wheelhouse" / "a-1.0-py3-none-any.whl"
        assert os.path.samefile(wheel, house / "a-1.0-py3-none-any.whl")
    finally:
        shutil.rmtree(ctx)


def test_without_lock_wheelhouse_or_certificate_the_context_has_empty_inputs(context_inputs):
    dockerfile, locks, _, _ = context_inputs
    ctx = images.make_context(_cell(), dockerfile, locks, None, None)
    try:
        assert _tree(ctx) == {
            "Dockerfile": b"FROM scratch\nARG CELL_NAME\n",
            "inputs/ca.crt": b"",
            "inputs/lock.txt": b"",
        }
        assert (ctx / "inputs" / "wheelhouse").is_dir()  # the Dockerfile copies it either way
    finally:
        shutil.rmtree(ctx)


def test_wheels_are_copied_where_hard_links_fail(context_inputs, monkeypatch):
    dockerfile, locks, house, _ = context_inputs

    def cross_device(src: object, dst: object) -> None:
        raise OSError(18, "Invalid cross-device link")  # EXDEV: the context on another disk

    monkeypatch.setattr(images.os, "link", cross_device)
    ctx = images.make_context(_cell(), dockerfile, locks, house, None)
    try:
        wheel = ctx / "inputs" / "wheelhouse" / "b-1.0-py3-none-any.whl"
        assert wheel.read_bytes() == b"wheel b"
        assert not os.path.samefile(wheel, house / "b-1.0-py3-none-any.whl")
    finally:
        shutil.rmtree(ctx)


def test_an_os_lock_round_trips_its_pins_and_names_a_bad_line(tmp_path):
    cell = _cell()
    path = lock.os_lock_path(cell, tmp_path)
    assert path == tmp_path / f"{cell.name}.os.txt"
    pins = {"libstdc++6": "12.2.0-14", "gcc": "4:12.2.0-3", "python3.12": "3.12.3-1ubuntu0.1"}
    lock.write_os_lock(path, cell, pins)
    header = path.read_text().splitlines()[:2]
    assert header[0].startswith(f"# cudastack OS lock for cell {cell.name}")
    # It names its build's time as the snapshot that still serves these versions.
    built = re.fullmatch(
        r"# Built (\d{8}T\d{6}Z): .*`cudastack build --cell (\S+) "
        r"--apt-snapshot (\S+)` .*",
        header[1],
    )
    assert built and built.group(2) == cell.name and built.group(1) == built.group(3), header[1]
    assert abs(calendar.timegm(time.strptime(built.group(1), "%Y%m%dT%H%M%SZ")) - time.time()) < 60
    assert lock.read_os_lock(path) == dict(sorted(pins.items()))
    # What reaches the Dockerfile's unquoted $OS_PACKAGES is held to apt's pin shape.
    path.write_text(path.read_text() + "gcc=1; curl x | sh\n")
    with pytest.raises(lock.LockError, match=r"\.os\.txt:6: 'gcc=1; curl x \| sh' is not an OS"):
        lock.read_os_lock(path)
    path.write_text("-o=Dpkg::Pre-Invoke=x\n")
    with pytest.raises(lock.LockError, match=r"\.os\.txt:1: .* is not an OS package pin"):
        lock.read_os_lock(path)


def test_an_os_lock_is_never_written_with_a_line_apt_would_not_take(tmp_path):
    path = lock.os_lock_path(_cell(), tmp_path)
    with pytest.raises(lock.LockError, match="not OS package pins: ========="):
        lock.write_os_lock(path, _cell(), {"gcc": "4:12.2.0-3", "": "========="})
    assert not path.exists()
