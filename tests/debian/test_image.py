"""obdsnap's container image: `make image` builds a valid OCI archive, offline, that holds
obdsnap and its tools, packs reproducibly and imports into containerd under its name.

Run with -s to see the image's sizes.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import build_image
import pytest
from e2e.conftest import missing_requirements
from e2e.containerd import PrivateContainerd
from e2e.obdsnap_image import OciArchive, make_image, project_version, sha256

from .debian_root import DebianRoot, unpacked_root

pytestmark = [pytest.mark.root, pytest.mark.slow]

TOOLS = ("mkfs.ext4", "mkfs.xfs", "mount", "umount", "losetup", "modprobe", "blkid")


@pytest.fixture(scope="module")
def archive() -> Path:
    return make_image()


@pytest.fixture(scope="module")
def image(archive: Path) -> OciArchive:
    return OciArchive.read(archive)


@pytest.fixture(scope="module")
def root(image: OciArchive, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DebianRoot]:
    """The image's layer unpacked as a root to run commands in."""
    layer = tmp_path_factory.mktemp("layer") / "layer.tar"
    layer.write_bytes(image.layer_tar())
    with unpacked_root(layer) as unpacked:
        yield unpacked


def test_archive_is_an_oci_layout_whose_digests_and_sizes_check_out(
    archive: Path, image: OciArchive
) -> None:
    version = project_version()
    assert image.json("oci-layout") == {"imageLayoutVersion": "1.0.0"}
    descriptor, manifest = image.only_manifest()
    assert descriptor["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert descriptor["annotations"]["org.opencontainers.image.ref.name"] == (
        f"localhost/obdsnap:{version}"
    )
    assert manifest["schemaVersion"] == 2
    config = json.loads(image.blob(manifest["config"]))
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    layer_tar = image.layer_tar()
    assert config["rootfs"] == {"type": "layers", "diff_ids": [sha256(layer_tar)]}
    assert (
        config["os"] == "linux" and config["architecture"] == descriptor["platform"]["architecture"]
    )
    assert config["config"]["Entrypoint"] == ["/usr/bin/obdsnap"]
    assert config["config"]["Cmd"] == [
        "serve",
        "--config",
        "/etc/overlaybd-snapshotter/config.json",
    ]
    assert config["config"]["Labels"]["org.opencontainers.image.version"] == version
    referenced = {"index.json", "oci-layout"} | {
        f"blobs/sha256/{d['digest'].removeprefix('sha256:')}"
        for d in (descriptor, manifest["config"], layer)
    }
    assert set(image.files) == referenced, "files the index does not reach"
    print(
        f"\nimage localhost/obdsnap:{version}: archive {archive.stat().st_size / 2**20:.1f} MiB, "
        f"layer {layer['size'] / 2**20:.1f} MiB compressed, "
        f"{len(layer_tar) / 2**20:.1f} MiB uncompressed"
    )


def test_layer_is_slim_and_owned_by_numbers_with_fixed_times(image: OciArchive) -> None:
    with tarfile.open(fileobj=io.BytesIO(image.layer_tar())) as layer:
        members = layer.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names, key=lambda name: name.split("/")), "entries not sorted"
    for prefix in ("usr/share/doc/", "usr/share/man/", "var/lib/apt/lists/", "var/cache/apt/"):
        inside = [m.name for m in members if m.name.startswith(prefix) and not m.isdir()]
        assert not inside, f"{prefix} in the image: {inside[:5]}"
    assert not [m.name for m in members if m.name.startswith("var/log/") and m.isfile()]
    assert not [m.name for m in members if m.ischr() or m.isblk()], "device nodes in the layer"
    assert {m.uname for m in members} <= {""} and {m.gname for m in members} <= {""}
    newest = max(m.mtime for m in members)
    assert newest <= build_image.source_date_epoch(), f"a file dated {newest}"


def test_root_runs_obdsnap_and_has_its_tools(root: DebianRoot) -> None:
    version = project_version()
    assert root.run(["obdsnap", "--version"]).stdout.strip() == f"obdsnap {version}"
    assert root.run(["readlink", "-f", "/usr/bin/obdsnap"]).stdout.strip() == (
        "/opt/obdsnap/bin/obdsnap"
    )
    for tool in TOOLS:
        found = root.run(["sh", "-c", f"command -v {tool}"], check=False)
        assert found.returncode == 0, f"{tool} missing from the image"
    assert "mke2fs" in root.run(["mkfs.ext4", "-V"], check=False).stderr
    assert "mkfs.xfs" in root.run(["mkfs.xfs", "-V"]).stdout
    assert "kmod" in root.run(["modprobe", "--version"]).stdout


def test_packing_the_same_root_twice_gives_the_same_digest(
    root: DebianRoot, tmp_path: Path
) -> None:
    version, epoch = project_version(), build_image.source_date_epoch()
    first = build_image.pack_image(root.path, tmp_path / "first.oci.tar", version, epoch)
    second = build_image.pack_image(root.path, tmp_path / "second.oci.tar", version, epoch)
    assert first.manifest_digest == second.manifest_digest
    assert first.archive.read_bytes() == second.archive.read_bytes()


def test_ctr_imports_it_under_its_name(archive: Path, tmp_path: Path) -> None:
    missing = missing_requirements()
    if missing:
        pytest.skip("containerd needs " + "; ".join(missing))
    reference = f"localhost/obdsnap:{project_version()}"
    with PrivateContainerd(tmp_path / "logs").running() as containerd:
        containerd.ctr("images", "import", str(archive), timeout=600)
        assert reference in containerd.ctr("images", "ls", "-q").stdout.split()
        # Unpacked by containerd's own snapshotter: the entry point is there.
        containerd.ctr("images", "check", timeout=60)
        containerd.remove_image(reference)


def test_make_image_again_gives_the_same_image(archive: Path, image: OciArchive) -> None:
    """From the repository alone: the package is built again, installed into the cached root
    again, and the image's bytes are the same."""
    first_manifest = image.only_manifest()[0]["digest"]
    again = OciArchive.read(make_image())
    assert again.only_manifest()[0]["digest"] == first_manifest
