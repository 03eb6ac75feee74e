"""EROFS on the host (DESIGN-v1 §11 sniff, §12 rule 4 kernel check)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from obdsnap.blocking import BlockingRunner
from obdsnap.device.erofs import (
    EROFS_MAGIC,
    ErofsKernel,
    has_erofs_magic,
    lists_erofs,
    refuse_writable_erofs,
    sniffed,
)
from obdsnap.device.filesystem import FsSpec, spec_for
from obdsnap.errors import FailedPrecondition


def image_with(path: Path, magic: int) -> Path:
    with path.open("wb") as f:
        f.truncate(4096)
        f.seek(1024)
        f.write(struct.pack("<I", magic))
    return path


def test_the_magic_at_1024_makes_erofs(tmp_path: Path) -> None:
    assert has_erofs_magic(image_with(tmp_path / "erofs", EROFS_MAGIC))
    assert not has_erofs_magic(image_with(tmp_path / "other", 0xE2E1F5E0))  # big-endian
    short = tmp_path / "short"
    short.write_bytes(b"\0" * 1026)
    assert not has_erofs_magic(short)
    assert not has_erofs_magic(tmp_path / "missing")


def test_the_sniff_only_upgrades_to_erofs() -> None:
    assert sniffed(FsSpec(), erofs_found=True) == spec_for("erofs")
    assert sniffed(FsSpec(), erofs_found=False) == FsSpec()
    labelled = FsSpec("erofs", ("noatime",), ())
    assert sniffed(labelled, erofs_found=True) == labelled
    assert sniffed(labelled, erofs_found=False) == labelled


def test_writable_erofs_is_refused_by_name() -> None:
    refuse_writable_erofs(3, FsSpec())
    with pytest.raises(FailedPrecondition, match="erofs"):
        refuse_writable_erofs(3, spec_for("erofs"))


@pytest.mark.parametrize(
    ("text", "listed"),
    [
        ("nodev\tsysfs\n\text4\n\terofs\n", True),
        ("nodev\tsysfs\n\text4\n", False),
        ("nodev\terofs\n", False),  # not a block filesystem line
        ("\terofs2\n", False),
    ],
)
def test_proc_filesystems_lists_erofs(tmp_path: Path, text: str, listed: bool) -> None:
    path = tmp_path / "filesystems"
    path.write_text(text)
    assert lists_erofs(path) is listed


def test_an_unreadable_list_has_no_erofs(tmp_path: Path) -> None:
    assert not lists_erofs(tmp_path / "missing")


async def test_the_kernel_is_asked_once_and_modprobe_run_once(tmp_path: Path) -> None:
    listing = tmp_path / "filesystems"
    listing.write_text("\text4\n")
    calls = tmp_path / "calls"
    modprobe = tmp_path / "modprobe"
    modprobe.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nprintf "\\terofs\\n" >> {listing}\n')
    modprobe.chmod(0o755)
    kernel = ErofsKernel(listing, str(modprobe), BlockingRunner())
    assert await kernel.supported()
    listing.write_text("\text4\n")  # cached: not read again
    assert await kernel.supported()
    assert calls.read_text() == "erofs\n"


async def test_a_failing_modprobe_means_no_erofs(tmp_path: Path) -> None:
    listing = tmp_path / "filesystems"
    listing.write_text("\text4\n")
    kernel = ErofsKernel(listing, str(tmp_path / "no-such-modprobe"), BlockingRunner())
    assert not await kernel.supported()
