"""OS package pins: what a cell image's apt steps installed, as `name=version` lines apt takes."""

from __future__ import annotations

import re
import time

from cudastack.contract.errors import UserError

# Written by the Dockerfile's apt steps inside every cell image: each step appends the
# packages it installed or changed (dpkg's list before and after it), `name=version`.
APT_INSTALLED = "/opt/cudastack/apt-installed.txt"

# What apt takes as a pin: Debian policy's package names and version strings (epoch, upstream
# version, revision). Nothing else may reach the Dockerfile's unquoted $OS_PACKAGES.
DEB_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?")
DEB_VERSION = re.compile(r"[0-9A-Za-z.+~:-]+")


def parse(text: str) -> dict[str, str]:
    """``name=version`` lines (APT_INSTALLED's, an OS lock's) as name -> version, sorted; a later
    line's version of a package replaces an earlier one (a later apt step upgraded it). Lines
    without '=' (comments, blanks) are skipped."""
    found = {}
    for line in text.splitlines():
        name, sep, version = line.strip().partition("=")
        if sep and not name.startswith("#"):
            found[name] = version
    return dict(sorted(found.items()))


def bad_pin(name: object, version: object) -> bool:
    """Whether (name, version) is no Debian package name and version apt would take as a pin."""
    return not (
        isinstance(name, str)
        and isinstance(version, str)
        and DEB_NAME.fullmatch(name) is not None
        and DEB_VERSION.fullmatch(version) is not None
    )


def as_build_arg(pins: dict[str, str]) -> str:
    """The Dockerfile's OS_PACKAGES: ``name=version`` pins, space-separated, sorted. The caller
    has checked each with ``bad_pin``."""
    return " ".join(f"{name}={version}" for name, version in sorted(pins.items()))


# The distributions' snapshot archives (snapshot.debian.org, snapshot.ubuntu.com) name a moment
# as UTC YYYYMMDDTHHMMSSZ; the Dockerfile's APT_SNAPSHOT takes nothing else.
SNAPSHOT_TIME = re.compile(r"\d{8}T\d{6}Z")


def snapshot_now() -> str:
    """This moment as a snapshot time (UTC YYYYMMDDTHHMMSSZ)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def checked_snapshot(value: str) -> str:
    """``value`` if it is a snapshot time; UserError saying the form otherwise."""
    if not SNAPSHOT_TIME.fullmatch(value):
        raise UserError(
            f"--apt-snapshot {value!r} is not a snapshot time; give it as "
            "YYYYMMDDTHHMMSSZ (UTC), e.g. 20250301T000000Z"
        )
    return value
