"""Fixtures for tests against a real Slurm: one controller and one node on this machine."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

PACKAGES = "slurmctld slurmd slurm-client munge"
PARTITION = "debug"
CLUSTER = "cudastack-test"
# Binaries the fixture starts or the tests call; all four packages provide one of them.
TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scontrol", "scancel")
# And for the cluster with accounting.
ACCOUNTING_PACKAGES = "slurmdbd mariadb-server"
ACCOUNTING_TOOLS = ("slurmdbd", "sacctmgr", "sacct", "mariadbd", "mariadb-install-db", "mariadb")
DB_PASSWORD = "cudastack-test-only"  # a database of the test's own, on 127.0.0.1 only


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    """A running cluster: its slurm.conf, its one partition and node, its scratch folder."""

    conf: Path
    partition: str
    node: str
    cpus: int
    root: Path

    @property
    def env(self) -> dict[str, str]:
        """os.environ with SLURM_CONF pointing at this cluster, for client commands.

        Slurm's variables from the calling process are dropped: inside a job (a developer's
        salloc, a CI runner on a cluster), SLURM_JOB_ID and friends would make sbatch and
        srun act as a step of that outer job instead of a job on this cluster.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
        env["SLURM_CONF"] = str(self.conf)
        return env

    def run(
        self, *args: str, timeout: float = 120, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """A Slurm client command against this cluster, output captured as text."""
        return subprocess.run(
            args, env=self.env, capture_output=True, text=True, timeout=timeout, check=check
        )


def slurm_env(slurm: SlurmCluster) -> dict[str, str]:
    """The environment for subprocess calls that must reach the test cluster."""
    return slurm.env


def _require(condition: bool, message: str) -> None:
    # As the engine fixture: CI installs everything (.ci/run), so a gap there is a failure;
    # a developer's machine without Slurm skips these tests.
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as exc:
        return f"  ({exc})"
    return "\n".join(f"  {line}" for line in text) or "  (empty)"


def _daemon(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    # Foreground daemons (-F, -D) stay children of pytest, so teardown stops exactly these
    # processes and never a munged or slurmd the machine runs for itself. A session of their
    # own: a Ctrl-C at the terminal reaches pytest, whose teardown stops them in order.
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _leftovers(conf: Path, daemons: list[subprocess.Popen]) -> list[int]:
    """Processes of this cluster's jobs: slurmstepd and what it started.

    slurmstepd detaches from slurmd (its own session, so that jobs survive a slurmd restart),
    and stopping slurmd leaves it and the job running. slurmd hands it SLURM_CONF, and a job
    inherits it from sbatch's environment: that names this cluster's processes, and no other's.
    The daemons have it too (from the fixture), and so do their own helpers (slurmscriptd).
    """
    mark = f"SLURM_CONF={conf}".encode()
    ours = {os.getpid(), *(proc.pid for proc in daemons)}
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if mark not in proc.joinpath("environ").read_bytes().split(b"\0"):
                continue
            # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces.
            ppid = int(proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
            if int(proc.name) not in ours and ppid not in ours:
                found.append(int(proc.name))
    return found


FEATURES = "Features=type-a,type-b"


def _accounting_lines(dbd_port: int, munge_socket: Path) -> str:
    """slurm.conf's accounting: slurmdbd, or none (what sacct then says is the fallback's cue)."""
    if not dbd_port:
        return """\
# No slurmdbd: the code under test must cope without sacct, as the issue says.
AccountingStorageType=accounting_storage/none
# MinJobAge stays at its default (300 s), as on a real cluster: without accounting, that is
# how long scontrol still knows a finished job.
"""
    return f"""\
# slurmdbd keeps every job (sacct), as real clusters do; it is asked with this cluster's munged.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={dbd_port}
AccountingStoragePass={munge_socket}
# scontrol forgets a finished job 2 s after it ends (at the controller's next purge, within a
# minute): then only sacct tells how it ended.
MinJobAge=2
"""


def _slurm_conf(
    root: Path, node: str, cpus: int, memory_mb: int, munge_socket: Path, dbd_port: int = 0
) -> str:
    ctld_port, slurmd_port = _free_port(), _free_port()
    return f"""\
ClusterName={CLUSTER}
# The node and the controller are this host; their addresses are given, so that nothing
# depends on how (or whether) the host name resolves.
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
# Slurm's clients and daemons ask this cluster's own munged, never the machine's.
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
MpiDefault=none
# No systemd and no delegated cgroup tree (a container or VM started without one): track a
# job's processes by their parent pids and bind nothing, which needs no cgroup at all.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
{_accounting_lines(dbd_port, munge_socket)}JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# A node that was down comes back by itself once its slurmd registers again.
ReturnToService=2
# Everything the daemons write stays in this cluster's folder; nothing in /etc or /var.
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "slurmctld.log"}
SlurmdLogFile={root / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
# The package's plugstack.conf would load whatever SPANK plugins the machine has (pyxis).
PlugStackConfig={root / "plugstack.conf"}
MailProg=/bin/true
# A cancelled or timed-out task gets SIGKILL 5 s after SIGTERM (default 30): quicker tests.
KillWait=5
# Two features, as two GPU types would be: --constraint "type-a|type-b" asks for each.
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} {FEATURES} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="session")
def slurm():
    """A real Slurm cluster (Debian's packages), started for this session as root; no
    accounting (sacct fails), as the issue's test cluster."""
    yield from _cluster(accounting=False)


@pytest.fixture(scope="session")
def slurm_accounting():
    """A second real Slurm cluster, with accounting: slurmdbd on its own MariaDB, as real
    clusters keep it; scontrol forgets a finished job within a minute (MinJobAge=2)."""
    yield from _cluster(accounting=True)


def _database(root: Path, start, wait_for) -> int:
    """A MariaDB of this cluster's own in ``root``/db, listening on 127.0.0.1 only, with the
    user slurmdbd logs in as; its port."""
    datadir, sock, port = root / "db", root / "mysqld.sock", _free_port()
    # --no-defaults: the machine's /etc/mysql settings are not this database's.
    _checked(
        [
            "mariadb-install-db",
            "--no-defaults",
            f"--datadir={datadir}",
            "--user=root",
            "--skip-test-db",
        ]
    )
    start(
        "mariadbd",
        [
            "mariadbd",
            "--no-defaults",
            f"--datadir={datadir}",
            "--user=root",
            f"--socket={sock}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={root / 'mysqld.pid'}",
            "--innodb-log-file-size=8M",  # the default 96 MB only costs disk here
        ],
        root / "mariadbd.log",
    )
    wait_for(sock.exists, "MariaDB's socket", 60)
    grant = (
        f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{DB_PASSWORD}'; "
        "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
    )
    _checked(["mariadb", "--no-defaults", f"--socket={sock}", "-u", "root", "-e", grant])
    return port


def _checked(argv: list[str], env: dict[str, str] | None = None) -> None:
    """Run a set-up command; a failure fails the fixture with its output, not just its code."""
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode:
        pytest.fail(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}")


def _slurmdbd_conf(root: Path, munge_socket: Path, dbd_port: int, db_port: int) -> Path:
    conf = root / "slurmdbd.conf"  # where slurmdbd looks: beside SLURM_CONF
    conf.write_text(
        f"""\
AuthType=auth/munge
AuthInfo=socket={munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={dbd_port}
SlurmUser=root
LogFile={root / "slurmdbd.log"}
PidFile={root / "slurmdbd.pid"}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db_port}
StorageUser=slurm
StoragePass={DB_PASSWORD}
StorageLoc=slurm_acct_db
"""
    )
    conf.chmod(0o600)  # slurmdbd refuses a conf others may read: it holds the password
    return conf


def _cluster(accounting: bool):
    """Start a cluster (with slurmdbd and MariaDB when ``accounting``), yield it, stop it."""
    tools = TOOLS + (ACCOUNTING_TOOLS if accounting else ())
    missing = [name for name in tools if shutil.which(name) is None]
    packages = PACKAGES + (f" {ACCOUNTING_PACKAGES}" if accounting else "")
    _require(not missing, f"Slurm is needed ({', '.join(missing)}): apt-get install {packages}")
    _require(os.geteuid() == 0, "the Slurm test cluster runs its slurmd as root")

    # Unix socket paths are limited to ~100 characters, and munged's and slurmd's sockets live
    # in this folder: keep its path short (pytest's tmp_path can be long).
    root = Path(tempfile.mkdtemp(prefix="cs-slurm-", dir="/tmp"))
    # mkdtemp's 0700 would hide slurm.conf from a job of another user, and munged refuses a
    # socket that not everyone can reach through its parent folders.
    root.chmod(0o755)
    for folder in ("state", "spool"):
        (root / folder).mkdir(mode=0o700)
    munge = root / "munge"
    munge.mkdir(mode=0o755)  # as /run/munge
    node = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    memory_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
    munge_socket = munge / "munge.socket"
    key = munge / "munge.key"
    # munged refuses a key that others may read; 1024 random bits, as mungekey makes.
    key.write_bytes(os.urandom(128))
    key.chmod(0o600)
    conf = root / "slurm.conf"
    # A little under the real memory: a node that reports less than RealMemory is drained.
    dbd_port = _free_port() if accounting else 0
    conf.write_text(_slurm_conf(root, node, cpus, int(memory_mb * 0.9), munge_socket, dbd_port))
    (root / "plugstack.conf").write_text("")
    cluster = SlurmCluster(conf=conf, partition=PARTITION, node=node, cpus=cpus, root=root)

    procs: list[subprocess.Popen] = []
    logs = {
        # In the foreground munged logs to stderr, not to a --log-file.
        "munged": munge / "munged.out",
        "slurmctld": root / "slurmctld.log",
        "slurmd": root / "slurmd.log",
    }

    def logs_tail() -> str:
        return "\n".join(f"{name} ({path}):\n{_tail(path)}" for name, path in logs.items())

    def wait_for(check, what: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if check():
                return
            dead = [p.args[0] for p in procs if p.poll() is not None]
            if dead:
                pytest.fail(f"{', '.join(dead)} exited while waiting for {what}\n{logs_tail()}")
            time.sleep(0.5)
        pytest.fail(f"{what} did not happen in {seconds:g} s\n{logs_tail()}")

    def start(name: str, argv: list[str], out: Path, log: Path | None = None) -> None:
        """Start a daemon, its stdout into ``out``; ``log``: where it logs, if elsewhere."""
        logs[name] = log or out
        procs.append(_daemon(argv, out, cluster.env))

    daemons = 5 if accounting else 3
    try:
        start(
            "munged",
            [
                "munged",
                "--foreground",
                f"--socket={munge_socket}",
                f"--key-file={key}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
            logs["munged"],
        )
        wait_for(munge_socket.exists, "munged's socket", 30)
        if accounting:
            db_port = _database(root, start, wait_for)
            _slurmdbd_conf(root, munge_socket, dbd_port, db_port)
            # slurmdbd finds slurmdbd.conf beside SLURM_CONF (cluster.env has it).
            start("slurmdbd", ["slurmdbd", "-D"], root / "slurmdbd.out", root / "slurmdbd.log")
            wait_for(lambda: _listening(dbd_port), "slurmdbd's port", 60)
            _checked(["sacctmgr", "-i", "add", "cluster", CLUSTER], cluster.env)
        # -D: in the foreground; their log files are in slurm.conf, stderr only repeats them.
        start(
            "slurmctld",
            ["slurmctld", "-D", "-f", str(conf)],
            root / "slurmctld.out",
            logs["slurmctld"],
        )
        start("slurmd", ["slurmd", "-D", "-f", str(conf)], root / "slurmd.out", logs["slurmd"])

        def node_idle() -> bool:
            out = cluster.run("sinfo", "-h", "-n", node, "-o", "%T", timeout=30)
            return out.returncode == 0 and out.stdout.strip() == "idle"

        wait_for(node_idle, f"node {node} to be idle in sinfo", 90)
        yield cluster
    finally:
        if len(procs) == daemons and all(p.poll() is None for p in procs):
            # Jobs a failed test left behind: cancel them while slurmd can still end them.
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                cluster.run("scancel", f"--partition={PARTITION}", timeout=30)
                deadline = time.monotonic() + 30
                while _leftovers(conf, procs) and time.monotonic() < deadline:
                    time.sleep(0.5)
        for proc in reversed(procs):
            _stop(proc)
        for pid in _leftovers(conf, procs):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
