"""A clean Debian root filesystem, made by mmdebstrap, to install obdsnap into and run it in.

The root's tarball is cached under ``<repo>/.build/debian-root`` and made again
only when its inputs change: the suite, the variant, the package list and the
apt sources (this machine's Debian mirror, as its apt configuration names it).
Commands run in the root through ``unshare`` + ``chroot``, in a private mount
namespace with /proc, /sys and /dev bound in: the mounts end with the command,
none is ever seen outside it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
APT_SOURCES = Path("/etc/apt")
DEBIAN_COMPONENTS = {"main", "contrib", "non-free", "non-free-firmware"}

# unshare runs the shell in a new mount namespace with private propagation: the
# binds below stay in it and go when the command ends. The command gets a clean
# environment: nothing of this side's Python or pip set-up leaks into the root.
IN_ROOT = (
    'root=$1; shift; for fs in proc sys dev; do mount --rbind "/$fs" "$root/$fs" || exit 125; '
    "done; exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "
    'HOME=/root LANG=C.UTF-8 chroot "$root" "$@"'
)


def build_dir() -> Path:
    return Path(os.environ.get("OBDSNAP_BUILD_DIR") or REPO_ROOT / ".build")


def debian_sources(suite: str) -> str:
    """This machine's apt sources for ``suite`` of the Debian archive, as a deb822 file.

    Entries of other suites or of third-party archives are left out: the root gets
    Debian's packages from the mirror this machine uses, and from nothing else.
    """
    stanzas: list[str] = []
    for path in _source_files():
        if path.suffix == ".sources":
            stanzas += _deb822_stanzas(path.read_text(), suite)
        else:
            stanzas += _one_line_stanzas(path.read_text(), suite)
    return "\n".join(stanzas)


def _source_files() -> list[Path]:
    files = [APT_SOURCES / "sources.list"]
    parts = APT_SOURCES / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    return [f for f in files if f.is_file()]


def _is_debian_suite(suites: Sequence[str], components: Sequence[str], suite: str) -> bool:
    ours = {suite, f"{suite}-updates", f"{suite}-security"}
    return bool(suites) and set(suites) <= ours and set(components) <= DEBIAN_COMPONENTS


def _deb822_stanzas(text: str, suite: str) -> list[str]:
    kept: list[str] = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        if (
            fields.get("enabled", "yes").lower() == "no"
            or "deb" not in fields.get("types", "").split()
        ):
            continue
        suites = fields.get("suites", "").split()
        components = fields.get("components", "").split()
        if not _is_debian_suite(suites, components, suite):
            continue
        stanza = [
            "Types: deb",
            f"URIs: {fields['uris']}",
            f"Suites: {' '.join(suites)}",
            f"Components: {' '.join(components)}",
        ]
        if "signed-by" in fields:
            stanza.append(f"Signed-By: {fields['signed-by']}")
        kept.append("\n".join(stanza) + "\n")
    return kept


def _one_line_stanzas(text: str, suite: str) -> list[str]:
    kept: list[str] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        options = ""
        if len(words) > 1 and words[1].startswith("["):
            end = next(i for i, word in enumerate(words) if word.endswith("]"))
            options = " ".join(words[1 : end + 1])
            words = [words[0], *words[end + 1 :]]
        if len(words) < 4 or not _is_debian_suite([words[2]], words[3:], suite):
            continue
        signed_by = [o for o in options.strip("[]").split() if o.startswith("signed-by=")]
        stanza = [
            "Types: deb",
            f"URIs: {words[1]}",
            f"Suites: {words[2]}",
            f"Components: {' '.join(words[3:])}",
        ]
        if signed_by:
            stanza.append(f"Signed-By: {signed_by[0].split('=', 1)[1]}")
        kept.append("\n".join(stanza) + "\n")
    return kept


def root_tarball(suite: str, packages: Sequence[str], variant: str = "apt") -> Path:
    """The cached tarball of a ``suite`` root with ``packages``; made by mmdebstrap when missing.

    Skips the test where mmdebstrap or a Debian ``suite`` apt source is missing.
    """
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap not found (apt-get install mmdebstrap)")
    sources = debian_sources(suite)
    if not sources:
        pytest.skip(f"no apt source of Debian {suite} on this machine")
    inputs = {"suite": suite, "variant": variant, "packages": sorted(packages), "sources": sources}
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    cache = build_dir() / "debian-root"
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"{suite}-{key}.tar"
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.is_file():
            return tarball
        for stale in cache.glob(f"{suite}-*.tar"):
            stale.unlink()
        sources_file = cache / f"{suite}-{key}.sources"
        sources_file.write_text(sources)
        partial = tarball.with_suffix(".tar.new")
        done = subprocess.run(
            [
                "mmdebstrap",
                "--quiet",
                "--mode=root",
                "--format=tar",
                f"--variant={variant}",
                f"--include={','.join(sorted(packages))}",
                suite,
                str(partial),
                str(sources_file),
            ],
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
        sources_file.unlink()
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise AssertionError(f"mmdebstrap failed ({done.returncode}):\n{done.stderr[-4000:]}")
        os.replace(partial, tarball)
    return tarball


class DebianRoot:
    """An unpacked root filesystem under ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as run inside the root; exec'ed all the way, so its PID is the command's."""
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            IN_ROOT,
            "in-root",
            str(self.path),
            *argv,
        ]

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
        prefix = str(self.path)
        points = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
        return points


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
