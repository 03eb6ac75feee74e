"""Fixtures of the TurboOCI, EROFS and download-remote-blob tests: images in the registry of
the module's simulator."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from support.block import Image
from support.server_process import short_tmpdir
from support.simulator import RunningSimulator
from support.turbo import (
    DOCKER_GZIP_TYPE,
    GZIP_TYPE,
    TAR_TYPE,
    PackedTurboImage,
    TurboImage,
    build_erofs_image,
    build_packed_turbo_image,
    build_turbo_image,
)


@dataclass(frozen=True)
class TurboImages:
    gzip: TurboImage  # gzip originals (OCI and Docker media types) and an uncompressed one
    plain: TurboImage  # uncompressed originals only


@pytest.fixture(scope="module")
def turbo(simulator: RunningSimulator) -> Iterator[TurboImages]:
    work = short_tmpdir()
    try:
        yield TurboImages(
            gzip=build_turbo_image(
                simulator.blob_store,
                work,
                "docker.io/library/turbo:v1",
                (GZIP_TYPE, TAR_TYPE, DOCKER_GZIP_TYPE),
                "gzip",
            ),
            plain=build_turbo_image(
                simulator.blob_store,
                work,
                "registry.example.com:5000/team/plain:v2",
                (TAR_TYPE, TAR_TYPE, TAR_TYPE),
                "plain",
            ),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


EROFS_FILES = {"erofs.txt": "from an erofs image\n", "etc/os-release": "erofs\n"}


@pytest.fixture(scope="module")
def erofs_image(simulator: RunningSimulator) -> Iterator[Image]:
    """A label-less overlaybd image whose file system is EROFS."""
    work = short_tmpdir()
    try:
        yield build_erofs_image(
            simulator.blob_store, work, "docker.io/library/erofs:v1", EROFS_FILES
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def packed_turbo(simulator: RunningSimulator) -> Iterator[PackedTurboImage]:
    """A TurboOCI image built by the simulator's image builder, with erofs and ext4 metas."""
    work = short_tmpdir()
    try:
        yield build_packed_turbo_image(
            simulator.blob_store, work, "docker.io/library/packed:v1", ("erofs", "ext4")
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
