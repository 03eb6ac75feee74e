"""Stand-ins for overlaybd's ``overlaybd-create``, ``overlaybd-commit`` and ``turboOCI-apply``.

Same arguments, messages and exit statuses as the real tools (overlaybd
``src/tools``) where the simulator can honour them; the files they write use
the format of :mod:`tcmusim.layerfmt`. ``install(DIR)`` writes small
executable wrappers into ``DIR`` (what obdsnap's ``overlaybd_util_bin_dir``
points at) that run ``python -m tcmusim.tools <tool> ...`` (``overlaybd-create``: the
same in Go when it can be built, :mod:`tcmusim.fastcreate`).

``overlaybd-create --turboOCI`` (alias ``--fastoci``) makes the writable layer
of a local TurboOCI conversion (marked so in its header; ``--mkfs`` puts an
empty ext4 in it), which only ``turboOCI-apply`` (:mod:`tcmusim.turbo_apply`)
writes and only ``overlaybd-commit --turboOCI`` commits, as the real tools'
separate format makes them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tcmusim import fastcreate, layerfmt, turbo_apply
from tcmusim.layerfmt import Header, Kind, LayerFormatError, Magic
from tcmusim.turbo_apply import TURBO_OCI_KEY
from tcmusim.turbo_fs import Fatal as _Fatal

TOOLS = ("overlaybd-create", "overlaybd-commit", "turboOCI-apply")
GIB = 1 << 30
ALGORITHMS = ("lz4", "zstd")


def install(directory: Path, blob_store: Path | None = None) -> list[Path]:
    """Write executable wrappers for the tools into ``directory``.

    ``blob_store``: where ``turboOCI-apply`` finds lowers that only have a digest.
    """
    directory.mkdir(parents=True, exist_ok=True)
    store = (
        f"{turbo_apply.BLOB_STORE_ENV}={shlex.quote(str(blob_store))}\n"
        f"export {turbo_apply.BLOB_STORE_ENV}\n"
        if blob_store
        else ""
    )
    package_root = Path(__file__).resolve().parent.parent
    python = os.path.realpath(sys.executable)
    written = []
    fast_create = fastcreate.binary()
    for tool in TOOLS:
        path = directory / tool
        run = f"exec {shlex.quote(python)} -m tcmusim.tools {tool}"
        if tool == "overlaybd-create" and fast_create is not None:
            fast = shlex.quote(str(fast_create))
            run = f"{fastcreate.PYTHON_ENV}={shlex.quote(python)} exec {fast}"
        path.write_text(
            "#!/bin/sh\n"
            f"# {tool} stand-in: the obdsnap TCMU simulator's layer format (tcmusim).\n"
            f"PYTHONPATH={shlex.quote(str(package_root))}${{PYTHONPATH:+:$PYTHONPATH}}\n"
            "export PYTHONPATH\n"
            f"{store}"
            f'{run} "$@"\n'
        )
        path.chmod(0o755)
        written.append(path)
    return written


def _open(path: str, flags: int, mode: int = 0o644) -> int:
    try:
        return os.open(path, flags, mode)
    except OSError as exc:
        raise _Fatal(f"failed to open file '{path}', {exc.errno}: {exc.strerror}") from exc


def create(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="overlaybd-create", description="this is overlaybd-create"
    )
    parser.add_argument("-u", dest="parent_uuid", default="", help="parent uuid")
    parser.add_argument("-s", dest="sparse", action="store_true", help="create sparse RW layer")
    parser.add_argument(
        "--turboOCI", "--fastoci", dest="turbo", action="store_true",
        help="commit using turboOCI format",
    )  # fmt: skip
    parser.add_argument("--mkfs", action="store_true", help="mkfs after create")
    parser.add_argument("--verbose", action="store_true", help="output debug info")
    parser.add_argument("data_file")
    parser.add_argument("index_file")
    parser.add_argument("vsize", type=int, help="virtual size(GB)")
    args = parser.parse_args(argv)
    if args.vsize < 0:
        parser.error("vsize: Value must be a non-negative number")
    virtual_size = args.vsize * GIB
    for path in (args.data_file, args.index_file):
        if os.path.lexists(path):
            raise _Fatal(f"failed to open file '{path}', 17: File exists")
    try:
        layerfmt.create_writable(
            Path(args.data_file),
            Path(args.index_file),
            virtual_size,
            sparse=args.sparse,
            parent_uuid="" if args.turbo else args.parent_uuid,
            extra={TURBO_OCI_KEY: True} if args.turbo else None,
        )
    except OSError as exc:
        raise _Fatal(f"failed to open file '{exc.filename}', {exc.errno}: {exc.strerror}") from exc
    if args.mkfs:
        _mkfs(args.data_file, virtual_size, turbo=args.turbo)
    print("lsmt_create has created files SUCCESSFULLY")
    return 0


def _mkfs(data_file: str, virtual_size: int, *, turbo: bool) -> None:
    # A TurboOCI layer is rebuilt by turboOCI-apply: no journal, so a 256 GB one stays small.
    features = ["-O", "^has_journal", "-E", f"offset={layerfmt.HEADER_SIZE},nodiscard"]
    options = features if turbo else ["-E", f"offset={layerfmt.HEADER_SIZE}"]
    done = subprocess.run(
        ["mkfs.ext4", "-F", "-q", *options, data_file, f"{virtual_size // 1024}k"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise _Fatal(f"mkfs failed, {done.stderr.strip()}")


def commit(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="overlaybd-commit", description="this is overlaybd-commit"
    )
    parser.add_argument("-m", dest="message", default="", help="add some custom message if needed")
    parser.add_argument("--uuid", default="", help="uuid")
    parser.add_argument("-p", "--parent-uuid", dest="parent_uuid", default="", help="parent uuid")
    parser.add_argument("-z", dest="zfile", action="store_true", help="compress to zfile")
    parser.add_argument("-t", dest="tar", action="store_true", help="wrapper with tar")
    parser.add_argument(
        "-f", dest="force", action="store_true", help="force compress. unlink exist"
    )
    parser.add_argument(
        "--algorithm", default="", help="compress algorithm, [lz4|zstd](default lz4)"
    )
    parser.add_argument(
        "--bs",
        type=int,
        default=-1,
        help="The size of a data block in KB. Must be a power of two between 4K~64K "
        "[4/8/16/32/64](default 4)",
    )
    parser.add_argument("--turboOCI", "--fastoci", dest="turbo", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--seal", action="store_true", help="seal only, data_file is output itself")
    parser.add_argument(
        "--commit_sealed", action="store_true", help="commit sealed, index_file is output"
    )
    parser.add_argument("data_file")
    parser.add_argument("index_file")
    parser.add_argument("commit_file", nargs="?", default="")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.data_file):
        parser.error(f"data_file: File does not exist: {args.data_file}")
    if args.seal:
        return _seal(args.data_file, args.index_file)
    if args.commit_sealed:
        args.commit_file = args.index_file
    elif not args.commit_file:
        parser.error("commit_file is required")

    data_fd = _open(args.data_file, os.O_RDWR)
    try:
        data = _source_header(data_fd, args.index_file, sealed=args.commit_sealed, turbo=args.turbo)
        if args.force:
            Path(args.commit_file).unlink(missing_ok=True)
        algorithm, block_size = _compression(args)
        out = _open(args.commit_file, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            header = Header(
                magic=Magic.ZFILE if args.zfile else Magic.LSMT,
                kind=Kind.COMMIT,
                virtual_size=data.virtual_size,
                uuid=args.uuid or data.uuid,
                parent_uuid=args.parent_uuid or data.parent_uuid,
                algorithm=algorithm,
                block_size=block_size,
                message=args.message,
                extra=dict(data.extra),
            )
            # Like the real tool, -t only wraps the zfile output.
            tar_name = os.path.basename(args.commit_file) if args.tar and args.zfile else None
            layerfmt.pack(data_fd, layerfmt.HEADER_SIZE, header, out, tar_name=tar_name)
            os.fsync(out)
        except OSError as exc:
            raise _Fatal(f"failed to perform commit(), {exc.errno}: {exc.strerror}") from exc
        finally:
            os.close(out)
    finally:
        os.close(data_fd)
    print("overlaybd-commit has committed files SUCCESSFULLY")
    return 0


def _seal(data_file: str, index_file: str) -> int:
    try:
        layerfmt.seal(Path(data_file), Path(index_file))
    except LayerFormatError as exc:
        raise _Fatal(
            f"failed to create lsmt file object, possibly wrong file format! ({exc})"
        ) from exc
    except OSError as exc:
        raise _Fatal(f"failed to open file '{exc.filename}', {exc.errno}: {exc.strerror}") from exc
    print("overlaybd-commit has sealed files SUCCESSFULLY")
    return 0


def _source_header(data_fd: int, index_file: str, *, sealed: bool, turbo: bool) -> Header:
    """What is committed: a writable data/index pair, or (``--commit_sealed``) a sealed file."""
    try:
        data = layerfmt.read_header(data_fd)
        if sealed:
            if data.kind is not Kind.SEALED:
                raise LayerFormatError(f"a {data.kind.value} file, not a sealed layer")
            return data
        index_fd = _open(index_file, os.O_RDONLY)
        try:
            index = layerfmt.read_header(index_fd)
        finally:
            os.close(index_fd)
        if data.kind is not Kind.DATA or index.kind is not Kind.INDEX:
            raise LayerFormatError("not a writable data/index pair")
        if index.data_uuid != data.uuid:
            raise LayerFormatError("the index belongs to another data file")
        if bool(data.extra.get(TURBO_OCI_KEY)) != turbo:
            made = "with" if data.extra.get(TURBO_OCI_KEY) else "without"
            raise LayerFormatError(
                f"a layer made {made} overlaybd-create --turboOCI, committed "
                f"{'with' if turbo else 'without'} --turboOCI"
            )
        return data
    except LayerFormatError as exc:
        raise _Fatal(
            f"failed to create lsmt file object, possibly wrong file format! ({exc})"
        ) from exc


def _compression(args: argparse.Namespace) -> tuple[str, int]:
    """``-z``'s algorithm and block size in bytes; ("", 0) without it."""
    if args.zfile:
        algorithm = args.algorithm or "lz4"
        if algorithm not in ALGORITHMS:
            raise _Fatal("invalid '--algorithm' parameters.")
        kib = 4 if args.bs == -1 else args.bs
        if kib & (kib - 1) or not 4 <= kib <= 64:
            raise _Fatal("invalid '--bs' parameters.")
        return algorithm, kib * 1024
    if args.algorithm or args.bs != -1:
        print(
            "WARNING option '--bs' and '--algorithm' will be ignored without '-z'", file=sys.stderr
        )
    return "", 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] not in TOOLS:
        print(f"usage: python -m tcmusim.tools {{{','.join(TOOLS)}}} ARGS...", file=sys.stderr)
        return 2
    tool = {
        "overlaybd-create": create,
        "overlaybd-commit": commit,
        "turboOCI-apply": turbo_apply.main,
    }[arguments[0]]
    try:
        return tool(arguments[1:])
    except _Fatal as exc:
        print(exc, file=sys.stderr)
        return 255


if __name__ == "__main__":
    sys.exit(main())
