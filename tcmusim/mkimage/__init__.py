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
    obdsnap-sim-mkimage --store DIR --turbo-oci erofs[,ext4] [--uncompressed]
                        [--oci-tar FILE] [--ref REF] LAYER.tar[.gz]...

prints ``{"layers": [{"digest", "size", "uuid", "diff_id", ...}], ...}`` as JSON.
With ``--turbo-oci``, a TurboOCI image (:mod:`tcmusim.mkimage.turbo`): the
original layers and their meta layers in the store; the archive's layers are
the meta layers, annotated as Go's convertor does, and it carries the originals.
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
    parser.add_argument(
        "--turbo-oci",
        metavar="FS[,FS]",
        help="a TurboOCI image: the original layers and a meta layer each, with these fs "
        "metas (erofs, ext4)",
    )
    parser.add_argument(
        "--uncompressed", action="store_true", help="TurboOCI: plain tar originals, not tar.gz"
    )
    args = parser.parse_args(argv)
    try:
        result = _build_turbo(args) if args.turbo_oci else _build(args)
    except (BuildError, OSError, tarfile.TarError) as exc:
        print(f"obdsnap-sim-mkimage: {exc}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


def _build(args: argparse.Namespace) -> dict[str, object]:
    layers = build_layers(
        args.layers, args.store, size_gb=args.size_gb, zfile=args.zfile, work_dir=args.work_dir
    )
    result: dict[str, object] = {}
    if args.oci_tar:
        result["manifest_digest"] = write_oci_archive(layers, args.oci_tar, args.ref)
        result["oci_tar"] = str(args.oci_tar)
        result["ref"] = args.ref
    result["layers"] = [asdict(layer) for layer in layers]
    return result


def _build_turbo(args: argparse.Namespace) -> dict[str, object]:
    # Imported here: turbo uses tcmusim.turbo_fs, which imports this package.
    from tcmusim.mkimage import turbo

    layers = turbo.build_turbo_layers(
        args.layers,
        args.store,
        fs_types=args.turbo_oci.split(","),
        gzip_originals=not args.uncompressed,
        size_gb=args.size_gb,
        work_dir=args.work_dir,
    )
    result: dict[str, object] = {}
    if args.oci_tar:
        digest = turbo.write_turbo_oci_archive(layers, args.oci_tar, args.ref, args.store)
        result.update(manifest_digest=digest, oci_tar=str(args.oci_tar), ref=args.ref)
    result["layers"] = [
        {**asdict(layer), "annotations": turbo.turbo_annotations(layer)} for layer in layers
    ]
    return result
