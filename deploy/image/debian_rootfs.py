"""Debian root filesystems made by mmdebstrap, cached, and commands run inside them.

Shared by the image build (deploy/image/build_image.py) and the packaging tests.
A root's tarball is cached under ``<build dir>/debian-root`` and made again only
when its inputs change: the suite, the variant, the package list and the apt
sources (this machine's Debian mirror, as its apt configuration names it).
Commands run in a root through ``unshare`` + ``chroot``, in a private mount
namespace with /proc, /sys and /dev bound in: the mounts end with the command,
none is ever seen outside it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

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


class RootUnavailable(Exception):
    """This machine cannot make the root: mmdebstrap or a Debian apt source is missing."""


def build_dir() -> Path:
    return Path(os.environ.get("OBDSNAP_BUILD_DIR") or REPO_ROOT / ".build")


def in_root_command(root: Path, argv: Sequence[str]) -> list[str]:
    """``argv`` as run inside ``root``; exec'ed all the way, so its PID is the command's."""
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        IN_ROOT,
        "in-root",
        str(root),
        *argv,
    ]


def root_tarball(
    suite: str,
    packages: Sequence[str],
    variant: str = "apt",
    name: str | None = None,
    options: Sequence[str] = (),
) -> Path:
    """The cached tarball of a ``suite`` root with ``packages``; made by mmdebstrap when missing.

    ``name`` (the suite by default) tells roots of different uses apart: a new key
    replaces only the stale tarball of the same name. ``options`` are further
    mmdebstrap options, part of the key.
    Raises RootUnavailable where mmdebstrap or a Debian ``suite`` apt source is missing.
    """
    if shutil.which("mmdebstrap") is None:
        raise RootUnavailable("mmdebstrap not found (apt-get install mmdebstrap)")
    sources = debian_sources(suite)
    if not sources:
        raise RootUnavailable(f"no apt source of Debian {suite} on this machine")
    name = name or suite
    inputs: dict[str, object] = {
        "suite": suite,
        "variant": variant,
        "packages": sorted(packages),
        "sources": sources,
    }
    if options:
        inputs["options"] = list(options)
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    cache = build_dir() / "debian-root"
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"{name}-{key}.tar"
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.is_file():
            return tarball
        for stale in cache.glob(f"{name}-*.tar"):
            stale.unlink()
        sources_file = cache / f"{name}-{key}.sources"
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
                *options,
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
            raise RuntimeError(f"mmdebstrap failed ({done.returncode}):\n{done.stderr[-4000:]}")
        os.replace(partial, tarball)
    return tarball
