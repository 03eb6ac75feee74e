"""Command line.

obdsnap serve [--config PATH] [--root DIR] [--address SOCK] [--log-level L]
obdsnap containerd-config [--config PATH] [--address SOCK] [--name NAME]
obdsnap check-config [--config PATH]
obdsnap migrate --root DIR --to go   (obdsnap stopped)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop

from obdsnap import __version__
from obdsnap.config import ConfigError, load_config
from obdsnap.layout import Layout
from obdsnap.server import StartupError, lock_root, serve
from obdsnap.storage.migration import MigrationError, export_to_go


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    _configure_logging(logging.INFO, report_caller=False)
    try:
        config = load_config(
            args.config,
            root=getattr(args, "root", None),
            address=getattr(args, "address", None),
            log_level=getattr(args, "log_level", None),
        )
    except ConfigError as exc:
        sys.exit(f"obdsnap: {exc}")
    if args.command == "check-config":
        print(json.dumps(config.as_json(), indent=2))
        return
    if args.command == "containerd-config":
        print(containerd_config_snippet(args.name, config.address))
        return
    if args.command == "migrate":
        layout = Layout(Path(config.root))
        try:
            with contextlib.closing(lock_root(layout)):
                print(uvloop.run(export_to_go(layout)))
        except (MigrationError, StartupError, OSError) as exc:
            sys.exit(f"obdsnap: {exc}")
        return
    _configure_logging(
        config.python_log_level,
        report_caller=config.log_report_caller,
        trace=config.log_level.lower() == "trace",
    )
    try:
        uvloop.run(serve(config))
    except (StartupError, OSError) as exc:
        sys.exit(f"obdsnap: {exc}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="obdsnap", description=__doc__)
    parser.add_argument("--version", action="version", version=f"obdsnap {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="serve the snapshots API on a unix socket")
    serve_cmd.add_argument("--config", type=Path, help="boot config (JSON)")
    serve_cmd.add_argument("--root", help="root directory (overrides the config)")
    serve_cmd.add_argument("--address", help="unix socket path (overrides the config)")
    serve_cmd.add_argument("--log-level", help="trace|debug|info|warn|error (overrides 'verbose')")
    check_cmd = commands.add_parser(
        "check-config", help="print the effective config, or why it cannot be used (exit 1)"
    )
    check_cmd.add_argument("--config", type=Path, help="boot config (JSON)")
    snippet_cmd = commands.add_parser(
        "containerd-config", help="print the containerd config that points at this snapshotter"
    )
    snippet_cmd.add_argument("--config", type=Path, help="boot config (JSON)")
    snippet_cmd.add_argument("--address", help="unix socket path (overrides the config)")
    snippet_cmd.add_argument("--name", default="overlaybd", help="snapshotter name in containerd")
    migrate_cmd = commands.add_parser(
        "migrate", help="with obdsnap stopped, hand the root back to the Go snapshotter"
    )
    migrate_cmd.add_argument("--config", type=Path, help="boot config (JSON)")
    migrate_cmd.add_argument("--root", help="root directory (overrides the config)")
    migrate_cmd.add_argument("--to", choices=["go"], required=True, help="metadata format")
    return parser


def containerd_config_snippet(name: str, address: str) -> str:
    return (
        "# containerd config.toml (version 2):\n"
        f"[proxy_plugins.{name}]\n"
        '  type = "snapshot"\n'
        f"  address = {json.dumps(address)}"
    )


# Libraries whose debug output is per frame or per statement: only at "trace".
CHATTY_LIBRARIES = ("hpack", "h2", "grpclib", "aiosqlite", "asyncio")


def _configure_logging(level: int, *, report_caller: bool, trace: bool = False) -> None:
    caller = " %(pathname)s:%(lineno)d" if report_caller else ""
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s %(name)s{caller}: %(message)s",
        force=True,
    )
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(level if trace else max(level, logging.INFO))
