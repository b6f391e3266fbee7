"""What `reproduce` compares and prints, dpkg's status file, OS package pins: no engine needed."""

from __future__ import annotations

import pytest
from conftest import cli

from cudastack.contract.failures import log_reason, recognise
from cudastack.environment import envinfo
from cudastack.host.cells import reproduce

STATUS = """\
Package: libc6
Status: install ok installed
Priority: optional
Architecture: amd64
Multi-Arch: same
Version: 2.36-9+deb12u10
Description: GNU C Library: Shared libraries
 Contains the standard libraries that are used by nearly all programs on
 the system. Version: 0.0 in a description is not the package's.

Package: libc6
Status: install ok installed
Architecture: i386
Version: 2.36-9+deb12u10

Package: gone
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: python3.11
Status: install ok installed
Architecture: amd64
Version: 3.11.2-6+deb12u6
"""


def test_dpkg_status_lists_installed_packages_only():
    assert envinfo.parse_dpkg_status(STATUS) == {
        "libc6": "2.36-9+deb12u10",
        "libc6:i386": "2.36-9+deb12u10",
        "python3.11": "3.11.2-6+deb12u6",
    }
    assert envinfo.parse_dpkg_status("") == {}


def test_no_dpkg_means_no_os_packages(tmp_path):
    assert envinfo.os_packages(tmp_path / "status") == {}
    (tmp_path / "status").write_text(STATUS)
    assert envinfo.os_packages(tmp_path / "status")["python3.11"] == "3.11.2-6+deb12u6"


def test_the_build_record_keeps_a_later_steps_version(tmp_path):
    record = tmp_path / "apt-installed.txt"
    assert envinfo.build_os_packages(record) == {}
    record.write_text("libc6=2.36-9+deb12u4\ngcc=4:12.2.0-3\n\nlibc6=2.36-9+deb12u10\n")
    assert envinfo.build_os_packages(record) == {"gcc": "4:12.2.0-3", "libc6": "2.36-9+deb12u10"}


def _env(**changes: object) -> dict:
    env: dict = {
        "python": {"version": "3.11.2"},
        "os_packages": {"libc6": "2.36-9", "gcc": "4:12.2.0-3", "tzdata": "2024a-0"},
        "installed": {"torch": "2.13.0+cpu", "numpy": "2.1.0"},
        "torch": {"version": "2.13.0+cpu", "cuda": "", "cudnn": "", "nccl": ""},
        "lock": {"hash": "sha256:aa"},
    }
    env.update(changes)
    return env


def _now(env: dict) -> dict:
    """``env`` as the in-image probe reports it: the lock as its hash alone."""
    return {**{k: v for k, v in env.items() if k != "lock"}, "lock_hash": env["lock"]["hash"]}


def test_an_identical_environment_says_so_and_lists_what_agreed():
    found = reproduce.compare(_env(), _now(_env()), "sha256:b1", "sha256:b1")
    assert reproduce.status(found) == "identical environment"
    assert reproduce.report(found) == []
    assert reproduce.report(found, show_identical=True) == [
        "base image: identical (sha256:b1)",
        "Python: identical (3.11.2)",
        "OS packages: 3 identical",
        "pip packages: 2 identical",
        "torch and its libraries: 4 identical",
        "lock: identical (sha256:aa)",
    ]


def test_every_category_reports_its_differences():
    now = _env(
        python={"version": "3.11.4"},
        os_packages={"libc6": "2.36-9+deb12u10", "gcc": "4:12.2.0-3", "hello": "2.10-3"},
        installed={"torch": "2.13.0+cpu", "numpy": "2.1.1"},
        torch={"version": "2.13.0+cpu", "cuda": "", "cudnn": "9.1.0", "nccl": ""},
        lock={"hash": "sha256:bb"},
    )
    found = reproduce.compare(_env(), _now(now), "sha256:b1", "sha256:b2")
    assert reproduce.status(found) == "8 differences"
    assert reproduce.report(found) == [
        "base image: sha256:b1 -> sha256:b2",
        "Python: 3.11.2 -> 3.11.4",
        "OS packages: 1 added, 1 removed, 1 changed",
        "  hello: (absent) -> 2.10-3",
        "  libc6: 2.36-9 -> 2.36-9+deb12u10",
        "  tzdata: 2024a-0 -> (absent)",
        "pip packages: 1 changed",
        "  numpy: 2.1.0 -> 2.1.1",
        "torch and its libraries: cuDNN: - -> 9.1.0",
        "lock: sha256:aa -> sha256:bb",
    ]
    shown = reproduce.report(found, show_identical=True)[10:]
    assert shown == [
        "OS packages: 1 identical",
        "pip packages: 1 identical",
        "torch and its libraries: 3 identical",
    ]


def test_a_long_list_is_cut_and_counted():
    many = {f"lib{i:03d}": "1.0" for i in range(reproduce.LISTED + 7)}
    found = reproduce.compare(_env(os_packages={}), _now(_env(os_packages=many)), "x", "x")
    lines = reproduce.report(found)
    assert lines[0] == f"OS packages: {reproduce.LISTED + 7} added"
    assert len(lines) == 1 + reproduce.LISTED + 1
    assert lines[-1] == "  … and 7 more"


def test_nccl_a_gpu_less_run_did_not_record_and_dpkg_less_bases_are_not_compared():
    before = _env(torch={"version": "2.13.0", "cuda": "13.0", "cudnn": "9.20.0", "nccl": ""})
    now = _env(torch={"version": "2.13.0", "cuda": "13.0", "cudnn": "9.20.0", "nccl": "2.28.9"})
    found = reproduce.compare(before, _now(now), "x", "x")
    assert reproduce.differences(found) == 0
    # A library a run recorded and the image now lacks is a difference.
    found = reproduce.compare(now, _now(before), "x", "x")
    assert reproduce.report(found) == ["torch and its libraries: NCCL: 2.28.9 -> -"]
    found = reproduce.compare(_env(os_packages={}), _now(_env(os_packages={})), "x", "x")
    assert reproduce.status(found).startswith("no differences in what was compared (not compared")


def test_what_a_run_did_not_record_is_not_called_identical():
    old = _env()
    del old["os_packages"]
    found = reproduce.compare(old, _now(_env()), "", "sha256:b1")
    assert reproduce.status(found) == (
        "no differences in what was compared (not compared: base image, OS packages)"
    )
    shown = reproduce.report(found, show_identical=True)
    assert "base image: not compared: the run recorded no base image identity" in shown
    assert "OS packages: not compared: the run recorded none" in shown
    missing_base = reproduce.compare(_env(), _now(_env()), "sha256:b1", "")
    assert reproduce.status(missing_base).endswith("(not compared: base image)")


def test_os_pins_are_what_apt_takes_and_nothing_else():
    env = {"os_packages_built": {"gcc": "4:12.2.0-3", "libstdc++6": "12.2.0-14", "a.b": "1~rc1"}}
    assert reproduce.os_pins(env, "x") == "a.b=1~rc1 gcc=4:12.2.0-3 libstdc++6=12.2.0-14"
    assert reproduce.os_pins({}, "x") == ""
    for bad in ({"gcc": "1; rm -rf /"}, {"-o=x": "1"}, {"gcc": "*"}, {"gcc": 1}):
        with pytest.raises(reproduce.ReproduceError, match=r"^x: recorded OS package "):
            reproduce.os_pins({"os_packages_built": bad}, "x")


def test_a_version_the_archive_lacks_is_named_with_the_snapshot_archives():
    log = [
        "Step 5/30 : RUN set -e; mkdir -p /opt/cudastack; apt-get install $OS_PACKAGES",
        "Reading package lists...",
        "E: Version '0.0-gone' for 'hello' was not found",
        "The command '/bin/sh -c set -e; …' returned a non-zero code: 100",
    ]
    reason = log_reason(log)
    assert reason.startswith("E: Version '0.0-gone' for 'hello' was not found; step 5/30 (RUN)")
    known = recognise("\n".join(log))
    assert known is not None and known.name == "apt-version"
    assert "snapshot.debian.org" in reason and "snapshot.ubuntu.com" in reason
    assert "--apt-snapshot" in reason


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--apt-snapshot", "20250301T000000Z"], "error: --apt-snapshot applies to a rebuild"),
        (["--rebuild", "--apt-snapshot", "2025-03-01"], "error: --apt-snapshot '2025-03-01' is"),
    ],
)
def test_a_bad_apt_snapshot_is_one_line(tmp_path, args, message):
    proc = cli("reproduce", str(tmp_path), *args)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(message)


def test_build_takes_only_a_snapshot_time(tmp_path):
    proc = cli("build", "--apt-snapshot", "2025-03-01", "--matrix", str(tmp_path / "m.toml"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: --apt-snapshot '2025-03-01' is not a snapshot time")
