"""Command line: ``python -m tcmusim [run] ...``, ``install-tools DIR``, ``mkimage ...``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from tcmusim import mkimage, tools
from tcmusim.simulator import Options, Simulator

USAGE = """\
python -m tcmusim [run] --configfs DIR --sysfs DIR --blob-store DIR [options]
python -m tcmusim install-tools DIR
python -m tcmusim mkimage --store DIR [--oci-tar FILE] LAYER...
"""


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="obdsnap-tcmu-sim",
        description="Simulate configfs TCMU + tcm_loop + SCSI disk discovery and overlaybd-tcmu.",
    )
    parser.add_argument("--configfs", type=Path, required=True, help="where to mount configfs")
    parser.add_argument("--sysfs", type=Path, required=True, help="the sysfs root to maintain")
    parser.add_argument(
        "--blob-store", type=Path, required=True, help="registry blobs: sha256/<hex>"
    )
    parser.add_argument("--open-latency", type=float, default=0.0, metavar="S")
    parser.add_argument("--appear-delay", type=float, default=0.0, metavar="S")
    parser.add_argument("--control", type=Path, help="JSON knobs file, re-read on every operation")
    parser.add_argument("--state-dir", type=Path, help="scratch space (default: a temporary dir)")
    parser.add_argument("--ready-file", type=Path, help="created once the mounts are up")
    parser.add_argument("--log-file", type=Path, help="log here instead of stderr")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    return parser


def run(argv: Sequence[str]) -> int:
    args = _run_parser().parse_args(argv)
    handler: logging.Handler = (
        logging.FileHandler(args.log_file) if args.log_file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(
        logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    logging.basicConfig(level=args.log_level, handlers=[handler], force=True)
    logging.getLogger("mfusepy").setLevel(logging.WARNING)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logging.getLogger("tcmusim").info("signal %s: shutting down", signal.Signals(signum).name)
        stop.set()

    # Installed before any FUSE thread starts, so libfuse leaves these signals to us.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)

    simulator = Simulator(
        Options(
            configfs=args.configfs.absolute(),
            sysfs=args.sysfs.absolute(),
            blob_store=args.blob_store.absolute(),
            open_latency=args.open_latency,
            appear_delay=args.appear_delay,
            control=args.control.absolute() if args.control else None,
            state_dir=args.state_dir.absolute() if args.state_dir else None,
        )
    )
    simulator.start()
    try:
        if args.ready_file:
            args.ready_file.write_text("ready\n")
        print("ready", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        simulator.stop()
        if args.ready_file:
            args.ready_file.unlink(missing_ok=True)
    return 0


def install_tools(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="obdsnap-tcmu-sim install-tools")
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    for path in tools.install(args.directory):
        print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in ("-h", "--help") and len(arguments) == 1:
        print(USAGE)
        _run_parser().print_help()
        return 0
    if arguments and arguments[0] == "install-tools":
        return install_tools(arguments[1:])
    if arguments and arguments[0] == "mkimage":
        return mkimage.main(arguments[1:])
    if arguments and arguments[0] == "run":
        arguments = arguments[1:]
    return run(arguments)
