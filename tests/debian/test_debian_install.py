"""obdsnap on a stock Debian 12 root: the .deb installs, serves a real call, removes cleanly.

The root is made by mmdebstrap from this machine's Debian mirror with what the
package depends on (and systemd, for ``systemd-analyze verify``), cached under
.build/debian-root; the package is built by ``make deb``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest
from grpclib.client import Channel
from support.processes import run
from support.server_process import ServerProcess

from obdsnap.genproto.containerd.services.snapshots import v1 as api

from .debian_root import REPO_ROOT, DebianRoot, build_dir, root_tarball, unpacked_root

pytestmark = [pytest.mark.root, pytest.mark.slow]

SUITE = "bookworm"
# The package's Depends and Recommends, systemd for systemd-analyze, and what
# `make install` needs (make, python3-venv).
ROOT_PACKAGES = (
    "python3",
    "util-linux",
    "mount",
    "e2fsprogs",
    "kmod",
    "xfsprogs",
    "systemd",
    "make",
    "python3-venv",
)
CONFIG = "/etc/overlaybd-snapshotter/config.json"
GO_ROOT = "/var/lib/containerd/io.containerd.snapshotter.v1.overlaybd"


@pytest.fixture(scope="module")
def tarball() -> Path:
    return root_tarball(SUITE, ROOT_PACKAGES)


@pytest.fixture(scope="module")
def deb_package() -> Path:
    """The package `make deb` builds, named obdsnap_<version>_<arch>.deb."""
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    package = build_dir() / "deb" / f"obdsnap_{version}_{arch}.deb"
    package.unlink(missing_ok=True)
    done = run("make", "--no-print-directory", "-C", REPO_ROOT, "deb", timeout=900)
    assert package.is_file(), f"make deb made no {package.name}:\n{done.stdout[-2000:]}"
    return package


def test_deb_installs_serves_and_removes_keeping_config_and_root(
    tarball: Path, deb_package: Path
) -> None:
    with unpacked_root(tarball) as root:
        shutil.copy(deb_package, root.path / "tmp" / deb_package.name)
        root.run(["dpkg", "-i", f"/tmp/{deb_package.name}"])
        assert root.run(["readlink", "-f", "/usr/bin/obdsnap"]).stdout.strip() == (
            "/opt/obdsnap/bin/obdsnap"
        )
        assert "home = /usr/bin" in (root.path / "opt/obdsnap/pyvenv.cfg").read_text()

        check_commands(root, "obdsnap")
        check_units_verify(root, "/lib/systemd/system")
        check_serves_a_call(root, "/usr/bin/obdsnap")

        edited = json.loads((root.path / CONFIG.lstrip("/")).read_text())
        edited["verbose"] = "debug"
        (root.path / CONFIG.lstrip("/")).write_text(json.dumps(edited))
        snapshot_dir = root.path / GO_ROOT.lstrip("/") / "snapshots/1"
        snapshot_dir.mkdir(parents=True)
        root.run(["dpkg", "-r", "obdsnap"])

        status = root.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "obdsnap"]).stdout
        assert status.strip() == "rc", f"obdsnap after dpkg -r: {status!r}"
        assert json.loads((root.path / CONFIG.lstrip("/")).read_text()) == edited
        assert snapshot_dir.is_dir(), "dpkg -r removed the snapshotter's root"
        assert not (root.path / "usr/bin/obdsnap").exists()
        assert not (root.path / "opt/obdsnap").exists(), sorted(
            str(p) for p in (root.path / "opt/obdsnap").rglob("*")
        )[:20]


def check_commands(root: DebianRoot, command: str) -> None:
    """--version, check-config of the installed config, and of a bad one."""
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert root.run([command, "--version"]).stdout.strip() == f"obdsnap {version}"

    config = root.path / CONFIG.lstrip("/")
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    effective = json.loads(root.run([command, "check-config"]).stdout)
    assert effective["root"] == GO_ROOT
    assert effective["address"] == "/run/overlaybd-snapshotter/overlaybd.sock"

    (root.path / "tmp/bad.json").write_text(json.dumps({"rwMode": "sideways"}))
    bad = root.run([command, "check-config", "--config", "/tmp/bad.json"], check=False)
    assert bad.returncode == 1, bad
    assert len(bad.stderr.strip().splitlines()) == 1 and "rwMode" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr


def check_units_verify(root: DebianRoot, unit_dir: str) -> None:
    """systemd-analyze verify passes on every installed unit, without a word about them."""
    units = sorted((root.path / unit_dir.lstrip("/")).glob("obdsnap.*"))
    assert any(u.name == "obdsnap.service" for u in units), units
    paths = [f"{unit_dir}/{u.name}" for u in units]
    done = root.run(["systemd-analyze", "verify", *paths], check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "obdsnap" not in output, output


def check_serves_a_call(root: DebianRoot, command: str) -> None:
    """`obdsnap serve` on a scratch root and socket answers Prepare, Stat, List and
    Mounts over its socket, and exits 0 on SIGTERM."""
    scratch = root.path / "scratch"
    server = ServerProcess(
        scratch,
        root.shell_command(
            [command, "serve", "--root", "/scratch/root", "--address", "/scratch/obdsnap.sock"]
        ),
    )
    with server:
        asyncio.run(_prepare_and_look(server.address))
        assert (scratch / "root").is_dir()
        status = server.stop()
    assert status == 0, f"obdsnap exited with {status}:\n{server.log()}"


async def _prepare_and_look(address: Path) -> None:
    channel = Channel(path=str(address))
    try:
        client = api.SnapshotsStub(channel)
        prepared = await client.prepare(api.PrepareSnapshotRequest(key="rootfs", parent=""))
        assert prepared.mounts, prepared
        info = (await client.stat(api.StatSnapshotRequest(key="rootfs"))).info
        assert (info.name, info.kind) == ("rootfs", api.Kind.ACTIVE)
        names = [
            i.name async for reply in client.list(api.ListSnapshotsRequest()) for i in reply.info
        ]
        assert names == ["rootfs"]
        mounts = await client.mounts(api.MountsRequest(key="rootfs"))
        assert mounts.mounts == prepared.mounts
    finally:
        channel.close()


def test_make_install_from_a_checkout(tarball: Path) -> None:
    """`make install` from the project's files, in a root with no obdsnap, gives the same
    commands; a second `make install` keeps the operator's config."""
    with unpacked_root(tarball) as root:
        source = root.path / "src/obdsnap"
        copy_checkout(source)
        wheels = root.path / "wheels"
        host_wheelhouse(wheels)
        # Offline: the dependencies come from the wheels made on this side.
        install = [
            "env",
            "PIP_NO_INDEX=1",
            "PIP_FIND_LINKS=/wheels",
            "make",
            "--no-print-directory",
            "-C",
            "/src/obdsnap",
            "install",
        ]
        root.run(install, timeout=600)
        assert root.run(["readlink", "-f", "/usr/local/bin/obdsnap"]).stdout.strip() == (
            "/opt/obdsnap/bin/obdsnap"
        )
        check_commands(root, "obdsnap")
        check_units_verify(root, "/etc/systemd/system")
        check_serves_a_call(root, "/usr/local/bin/obdsnap")

        config = root.path / CONFIG.lstrip("/")
        config.write_text(json.dumps({"verbose": "debug"}))
        again = root.run(install, timeout=600)
        assert "kept" in again.stdout, again.stdout
        assert json.loads(config.read_text()) == {"verbose": "debug"}


def copy_checkout(target: Path) -> None:
    """The project's files as git knows them (tracked and new, not ignored)."""
    listed = subprocess.run(
        [
            "git",
            "-C",
            str(REPO_ROOT),
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ],
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        origin = REPO_ROOT / name
        if origin.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target / name)


def host_wheelhouse(wheels: Path) -> None:
    """Wheels of obdsnap's runtime dependencies and of its build backend, made on this side
    by a pip of Debian's own python3, the interpreter of the root."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    requirements = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    venv = wheels.parent / "wheel-venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True, timeout=120)
    done = subprocess.run(
        [
            str(venv / "bin/python"),
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--disable-pip-version-check",
            "--wheel-dir",
            str(wheels),
            *requirements,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    shutil.rmtree(venv)
    assert done.returncode == 0, f"pip wheel failed:\n{done.stderr[-4000:]}"
