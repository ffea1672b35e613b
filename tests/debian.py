"""Debian tools a few tests drive (tmux, tcpdump): installed on demand, as CI is a fresh
machine where the tests run as root; never a reason to skip."""

from __future__ import annotations

import shutil
import subprocess


def ensure_tool(tool: str, package: str | None = None) -> str | None:
    """The path of `tool`, installing its Debian package with apt-get if it is missing
    (an `apt-get update` first only when the package lists do not know it). None if that
    cannot be done here (not root, no network): the caller decides whether that fails."""
    found = shutil.which(tool)
    if found:
        return found
    pkg = package or tool
    for cmd in (["apt-get", "install", "-y", "-q", pkg],
                ["sh", "-c", f"apt-get update -q && apt-get install -y -q {pkg}"]):
        try:
            subprocess.run(cmd, capture_output=True, timeout=300, check=False,
                           env={"DEBIAN_FRONTEND": "noninteractive",
                                "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        except (OSError, subprocess.TimeoutExpired):
            return None
        found = shutil.which(tool)
        if found:
            return found
    return None
