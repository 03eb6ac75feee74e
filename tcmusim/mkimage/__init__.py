"""Build overlaybd-style image layers (and an OCI archive of them) for the simulator.

Input: directory trees or OCI layer tarballs (``.tar``, ``.tar.gz``), bottom
layer first. Layer *k* is applied with overlay semantics onto the merged tree of
layers 1..k-1 (``.wh.<name>`` deletes ``<name>``, ``.wh..wh..opq`` empties its
directory of lower entries; in a directory input an overlayfs whiteout, a 0/0
character device, deletes too), then ``mkfs.ext4 -d`` turns the merged tree
into the layer's image, which is packed into a layer file (see
:mod:`tcmusim.layerfmt`) chained to the previous one by uuid.

Output: each layer file stored as ``<store>/sha256/<hex>`` and, with
``--oci-tar``, an OCI image layout tar (``ctr image import`` reads it) whose
layer *k* is a tar holding the single file ``overlaybd.commit`` = blob *k*, the
shape of an overlaybd local-format image. Fixed timestamps, uuids derived from
the content and a fixed ext4 uuid/hash seed make the output deterministic.

Command line::

    obdsnap-sim-mkimage --store DIR [--oci-tar FILE] [--ref REF] [-z] LAYER...

prints ``{"layers": [{"digest", "size", "uuid", "diff_id", ...}], ...}`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from tcmusim.mkimage.layers import (
    DEFAULT_SIZE_GB,
    BuiltLayer,
    build_layers,
    make_ext4,
    store_blob,
)
from tcmusim.mkimage.oci import write_oci_archive
from tcmusim.mkimage.tree import EPOCH, BuildError, apply_dir, apply_layer, apply_tar, tree_digest

__all__ = [
    "DEFAULT_REF",
    "DEFAULT_SIZE_GB",
    "EPOCH",
    "BuildError",
    "BuiltLayer",
    "apply_dir",
    "apply_layer",
    "apply_tar",
    "build_layers",
    "main",
    "make_ext4",
    "store_blob",
    "tree_digest",
    "write_oci_archive",
]

DEFAULT_REF = "docker.io/library/tcmusim:latest"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="obdsnap-sim-mkimage",
        description="Build overlaybd-style layer blobs (and an OCI archive) for tcmusim.",
    )
    parser.add_argument(
        "layers", nargs="+", type=Path, help="directories or layer tarballs, base first"
    )
    parser.add_argument(
        "--store", type=Path, required=True, help="blob store: <store>/sha256/<hex>"
    )
    parser.add_argument("--oci-tar", type=Path, help="also write an OCI image layout tar here")
    parser.add_argument("--ref", default=DEFAULT_REF, help="image name in the OCI archive")
    parser.add_argument("--size-gb", type=int, default=DEFAULT_SIZE_GB, help="virtual disk size")
    parser.add_argument("-z", "--zfile", action="store_true", help="ZFile magic instead of LSMT")
    parser.add_argument("--work-dir", type=Path, help="scratch space (default: the system's)")
    args = parser.parse_args(argv)
    try:
        layers = build_layers(
            args.layers, args.store, size_gb=args.size_gb, zfile=args.zfile, work_dir=args.work_dir
        )
        result: dict[str, object] = {}
        if args.oci_tar:
            result["manifest_digest"] = write_oci_archive(layers, args.oci_tar, args.ref)
            result["oci_tar"] = str(args.oci_tar)
            result["ref"] = args.ref
        result["layers"] = [asdict(layer) for layer in layers]
    except (BuildError, OSError, tarfile.TarError) as exc:
        print(f"obdsnap-sim-mkimage: {exc}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0
