from pathlib import Path

import pytest

from obdsnap import labels as L
from obdsnap.device import filesystem, syscalls
from obdsnap.device.filesystem import FsSpec, fs_spec, make_filesystem, mount_device
from obdsnap.errors import InvalidArgument


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    ran: list[tuple[str, ...]] = []

    async def record(*argv: str, time_limit_s: float = 300.0) -> str:
        ran.append(argv)
        return ""

    def mount(device: Path, mountpoint: Path, fs_type: str, options: list[str]) -> None:
        ran.append(("mount(2)", fs_type, ",".join(options), str(device), str(mountpoint)))

    monkeypatch.setattr(filesystem, "run_command", record)
    monkeypatch.setattr(syscalls, "mount", mount)
    return ran


@pytest.mark.parametrize(
    ("label", "mkfs", "mount"),
    [
        (
            "",
            [
                "mkfs",
                "-t",
                "ext4",
                "-O",
                "^has_journal,sparse_super,flex_bg",
                "-G",
                "1",
                "-E",
                "discard",
                "-F",
            ],
            ["mount(2)", "ext4", "discard,rw"],
        ),
        (
            "xfs",
            ["mkfs", "-t", "xfs", "-f", "-l", "size=4m", "-m", "crc=0"],
            ["mount(2)", "xfs", "nouuid,discard,rw"],
        ),
        ("f2fs", ["mkfs", "-t", "f2fs", "-S", "-w", "4096"], ["mount(2)", "f2fs", "rw"]),
        ("ntfs", ["mkfs", "-t", "ntfs", "-F", "-f"], ["mount", "-t", "ntfs", "-o", "rw"]),
        (
            "ext4;noatime,discard;-O ^has_journal -L x",
            ["mkfs", "-t", "ext4", "-O", "^has_journal", "-L", "x"],
            ["mount(2)", "ext4", "noatime,discard,rw"],
        ),
        ("ext4;;-F", ["mkfs", "-t", "ext4", "-F"], ["mount(2)", "ext4", "rw"]),
    ],
)
async def test_mkfs_and_mount_arguments(
    commands: list[tuple[str, ...]], label: str, mkfs: list[str], mount: list[str]
) -> None:
    spec = fs_spec({L.BLOB_FS_TYPE: label} if label else {})
    await make_filesystem(Path("/dev/sdx"), spec)
    await mount_device(Path("/dev/sdx"), Path("/mp"), spec, readonly=False)
    assert commands == [(*mkfs, "/dev/sdx"), (*mount, "/dev/sdx", "/mp")]


async def test_read_only_mount(commands: list[tuple[str, ...]]) -> None:
    await mount_device(Path("/dev/sdx"), Path("/mp"), FsSpec(), readonly=True)
    assert commands == [("mount(2)", "ext4", "discard,ro", "/dev/sdx", "/mp")]


@pytest.mark.parametrize(
    "label", ["btrfs", "ext4;a;b;c", "ext4;$(reboot)", "ext4;;-O `x`", "ext4;rw;--x=;y|z"]
)
def test_bad_labels_are_invalid_argument(label: str) -> None:
    with pytest.raises(InvalidArgument):
        fs_spec({L.BLOB_FS_TYPE: label})
