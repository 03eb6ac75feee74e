"""A clean Debian root filesystem, made by mmdebstrap, to install obdsnap into and run it in.

The roots and their cache are deploy/image/debian_rootfs.py's (shared with the
image build); this adds what tests want: a skip where no root can be made, and
an unpacked root that is checked for leftover mounts and removed.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import debian_rootfs
import pytest

from obdsnap.mountinfo import mounts_under

REPO_ROOT = debian_rootfs.REPO_ROOT
build_dir = debian_rootfs.build_dir


def root_tarball(suite: str, packages: Sequence[str], variant: str = "apt") -> Path:
    """The cached tarball of a ``suite`` root with ``packages``; made by mmdebstrap when missing.

    Skips the test where mmdebstrap or a Debian ``suite`` apt source is missing.
    """
    try:
        return debian_rootfs.root_tarball(suite, packages, variant)
    except debian_rootfs.RootUnavailable as missing:
        pytest.skip(str(missing))


class DebianRoot:
    """An unpacked root filesystem under ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as run inside the root; exec'ed all the way, so its PID is the command's."""
        return debian_rootfs.in_root_command(self.path, argv)

    def shell_command(self, argv: Sequence[str]) -> str:
        return shlex.join(self.command(argv))

    def run(
        self, argv: Sequence[str], *, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.command(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{shlex.join(argv)} exited with {done.returncode} in the root:\n"
                f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
            )
        return done

    def mounts_below(self) -> list[str]:
        """Mount points of this namespace at or below the root: none, outside a command."""
        return mounts_under(self.path)


@contextmanager
def unpacked_root(tarball: Path) -> Iterator[DebianRoot]:
    """``tarball`` unpacked in a fresh directory, removed afterwards.

    Short path under /tmp: sockets inside the root are reached from outside it.
    """
    path = Path(tempfile.mkdtemp(prefix="obd-deb-", dir="/tmp"))
    root = DebianRoot(path)
    try:
        subprocess.run(
            ["tar", "-C", str(path), "--numeric-owner", "-xf", str(tarball)],
            check=True,
            timeout=300,
        )
        yield root
    finally:
        leftover = root.mounts_below()
        assert not leftover, f"mounts left under the root: {leftover}"
        shutil.rmtree(path)
