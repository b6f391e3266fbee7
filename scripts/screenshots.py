"""The README's pictures: a run's terminal summary (docs/terminal.svg) and its report
(docs/report.png), from real runs, in a real terminal and in Chromium.

    .venv/bin/python scripts/screenshots.py                 # two quick CPU runs made here
    .venv/bin/python scripts/screenshots.py RUN_A RUN_B     # runs made before (e.g. on a GPU)

Without runs it makes two with `cudastack run --profile quick` in this Python environment (not
in the matrix's containers, even where Docker runs), the second with one CPU thread
(`--threads 1`) so that the comparison has real changes to show (a minute on two cores), writes
their report with `cudastack report`, and captures the whole page 1200 px wide in headless
Chromium (Debian's `chromium`, as tests/test_report.py uses it). The terminal picture is
`cudastack show` of the first run in a pseudo-terminal TERMINAL_COLUMNS wide, its colours kept,
saved as SVG by rich.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHES = "gemm,conv,elementwise,launch,sdpa"
WIDTH = 1200  # what the report must fit without scrolling sideways
TERMINAL_COLUMNS = 100  # what the terminal summary must fit without wrapping


def cudastack(*args: str) -> None:
    """Run the command line as a user would; stop with its output if it fails."""
    cmd = [sys.executable, "-m", "cudastack", *args]
    print("+", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def make_runs(folder: Path, benches: str) -> list[Path]:
    """Two quick runs of ``benches`` here: all threads, then one."""
    runs = []
    for name, extra in (("all-threads", []), ("one-thread", ["--threads", "1"])):
        out = folder / name
        cudastack("run", "--profile", "quick", "--bench", benches, "--out", str(out), *extra)
        runs.append(out)
    return runs


def screenshot(report: Path, png: Path) -> None:
    """``report`` captured whole, ``WIDTH`` px wide, as ``png``."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("error: no chromium on PATH; install Debian's chromium (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": WIDTH, "height": 900})
        page.goto(report.as_uri())
        png.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(png), full_page=True)
        browser.close()
    print(f"screenshot: {png}")


def terminal(args: list[str], columns: int) -> str:
    """What ``cudastack ARGS`` prints to a terminal ``columns`` wide, escape codes and all."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its stdout is the terminal
        os.chdir(ROOT)
        os.execv(sys.executable, [sys.executable, "-m", "cudastack", *args])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"error: cudastack {' '.join(args)} failed")
    return b"".join(chunks).decode("utf-8").replace("\r\n", "\n")


def terminal_svg(run: str, svg: Path) -> None:
    """``cudastack show RUN`` in a TERMINAL_COLUMNS-wide terminal, as ``svg``."""
    from rich.console import Console
    from rich.text import Text

    # By its name under --results-dir, so that the picture shows no folder of this machine.
    folder = Path(run).resolve()
    shown = terminal(["show", folder.name, "--results-dir", str(folder.parent)], TERMINAL_COLUMNS)
    with open(os.devnull, "w") as nowhere:
        console = Console(width=TERMINAL_COLUMNS, record=True, file=nowhere)
        console.print(Text.from_ansi(shown), soft_wrap=True)
    svg.parent.mkdir(parents=True, exist_ok=True)
    console.save_svg(str(svg), title=f"cudastack show {Path(run).name}")
    print(f"screenshot: {svg}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="run folders or ids (default: make two here)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png")
    parser.add_argument("--terminal", type=Path, default=ROOT / "docs" / "terminal.svg")
    parser.add_argument("--bench", default=BENCHES, help=f"benches of new runs ({BENCHES})")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cudastack-screenshot-") as tmp:
        runs = [str(r) for r in (args.runs or make_runs(Path(tmp), args.bench))]
        report = Path(tmp) / "report.html"
        cudastack("report", *runs, "-o", str(report))
        screenshot(report, args.out.resolve())
        terminal_svg(runs[0], args.terminal.resolve())


if __name__ == "__main__":
    main()
