"""Command line.

obdsnap [serve] CONFIG   (the config path alone, as Go's overlaybd-snapshotter takes it)
obdsnap serve [--config PATH] [--root DIR] [--address SOCK] [--log-level L] [--log-format F]
obdsnap containerd-config [--config PATH] [--address SOCK] [--name NAME] [--config-version 2|3]
obdsnap check-config [--config PATH | PATH]
obdsnap migrate --root DIR --to go   (obdsnap stopped)
obdsnap health [--config PATH] [--address SOCK] [--timeout S]   (exit 0 serving, 1 not)
obdsnap status [--config PATH] [--root DIR] [--address SOCK] [--json]   (read-only, as are:)
obdsnap ls [--config PATH] [--root DIR] [--filter F]... [--usage] [--json]
obdsnap devices [--config PATH] [--root DIR] [--json]
obdsnap intents [--config PATH] [--root DIR] [--json]
obdsnap attach --id N --config CONFIG.V1.JSON [--with-devid] [--tenant T] [--boot-config PATH]
obdsnap detach --id N [--force] [--tenant T] [--boot-config PATH]   (no containerd, no mount)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import uvloop

from obdsnap import __version__, attacher
from obdsnap.config import LOG_FORMATS, BootConfig, ConfigError, load_config
from obdsnap.containerd_config import (
    CONFIG_VERSIONS,
    ContainerdConfigError,
    ProxySnapshotter,
    containerd_config,
)
from obdsnap.health import DEFAULT_TIMEOUT_S, check_health
from obdsnap.inspect import command as inspection
from obdsnap.inspect.state import InspectError
from obdsnap.layout import Layout
from obdsnap.logs import configure_logging, hold_logging
from obdsnap.server import StartupError, lock_root, serve
from obdsnap.storage.migration import MigrationError, export_to_go

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    parser, commands = _parser()
    given = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(_go_command_line(commands, given))
    if args.command in attacher.COMMANDS:
        sys.exit(attacher.main(args))  # its --config is a device config, not obdsnap's
    hold_logging()  # the config's warnings are written in the format it asks for
    try:
        config = load_config(
            _config_path(args),
            root=getattr(args, "root", None),
            address=getattr(args, "address", None),
            log_level=getattr(args, "log_level", None),
            log_format=getattr(args, "log_format", None),
        )
    except ConfigError as exc:
        configure_logging(logging.INFO)
        sys.exit(f"obdsnap: {exc}")
    if args.command != "serve":
        configure_logging(logging.INFO)
    if args.command == "check-config":
        print(json.dumps(config.as_json(), indent=2))
        return
    if args.command == "containerd-config":
        snapshotter = ProxySnapshotter(args.name, config.address, config.root)
        try:
            print(containerd_config(snapshotter, args.config_version), end="")
        except ContainerdConfigError as exc:
            sys.exit(f"obdsnap: {exc}")
        return
    if args.command == "health":
        health = uvloop.run(check_health(config.address, args.timeout))
        print(f"obdsnap health: {health.line()}")
        sys.exit(0 if health.healthy else 1)
    if args.command in inspection.COMMANDS:
        request = inspection.Request(
            args.command,
            as_json=args.json,
            filters=getattr(args, "filter", None) or (),
            usage=getattr(args, "usage", False),
            timeout_s=getattr(args, "timeout", inspection.STATUS_TIMEOUT_S),
        )
        try:
            print(inspection.run(config, request), end="")
        except InspectError as exc:
            sys.exit(f"obdsnap: {exc}")
        return
    if args.command == "migrate":
        layout = Layout.resolved(config.root)
        try:
            with contextlib.closing(lock_root(layout)):
                print(uvloop.run(export_to_go(layout)))
        except (MigrationError, StartupError, OSError) as exc:
            sys.exit(f"obdsnap: {exc}")
        return
    configure_logging(
        config.python_log_level,
        log_format=config.log_format,
        report_caller=config.log_report_caller,
        trace=config.log_level.lower() == "trace",
    )
    effective = json.dumps(config.as_json(), separators=(",", ":"))
    log.info("obdsnap %s starting with config %s", __version__, effective)
    _log_settings(config)
    try:
        uvloop.run(serve(config))
    except (StartupError, OSError) as exc:
        sys.exit(f"obdsnap: {exc}")


def _go_command_line(commands: Collection[str], argv: list[str]) -> list[str]:
    """Go's ``overlaybd-snapshotter PATH`` (DESIGN-v1 §1): one argument alone is the config."""
    if len(argv) == 1 and not argv[0].startswith("-") and argv[0] not in commands:
        return ["serve", argv[0]]
    return argv


def _config_path(args: argparse.Namespace) -> Path | None:
    """``--config`` or the positional path; both only when they name the same file."""
    option: Path | None = args.config
    positional: Path | None = getattr(args, "config_path", None)
    if option is not None and positional is not None and option != positional:
        configure_logging(logging.INFO)
        sys.exit(f"obdsnap: the config path is given twice: --config {option} and {positional}")
    return option or positional


def _log_settings(config: BootConfig) -> None:
    log.info(
        "settings: rwMode %s, autoRemoveDev %s, writableLayerType %s, asyncRemove %s, "
        "writableCommit %s, runtimeType %s",
        config.rw_mode,
        _json_bool(config.auto_remove_dev),
        config.writable_layer_type,
        _json_bool(config.async_remove),
        config.writable_commit,
        config.runtime_type,
    )
    if config.mirror_registry:
        mirrors = ", ".join(
            f"{mirror.host}{' (insecure: http)' if mirror.insecure else ''}"
            for mirror in config.mirror_registry
        )
        log.info("mirror Registry: %s", mirrors)


def _json_bool(value: bool) -> str:
    return "true" if value else "false"


def _parser() -> tuple[argparse.ArgumentParser, frozenset[str]]:
    """The parser, and the names of its subcommands."""
    parser = argparse.ArgumentParser(prog="obdsnap", description=__doc__)
    parser.add_argument("--version", action="version", version=f"obdsnap {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="serve the snapshots API on a unix socket")
    serve_cmd.add_argument("--config", type=Path, help="boot config (JSON)")
    serve_cmd.add_argument(
        "config_path", nargs="?", type=Path, help="boot config (JSON), as Go's command line has it"
    )
    serve_cmd.add_argument("--root", help="root directory (overrides the config)")
    serve_cmd.add_argument("--address", help="unix socket path (overrides the config)")
    serve_cmd.add_argument("--log-level", help="trace|debug|info|warn|error (overrides 'verbose')")
    serve_cmd.add_argument("--log-format", help=f"{'|'.join(LOG_FORMATS)} (overrides 'logFormat')")
    check_cmd = commands.add_parser(
        "check-config", help="print the effective config, or why it cannot be used (exit 1)"
    )
    check_cmd.add_argument("--config", type=Path, help="boot config (JSON)")
    check_cmd.add_argument("config_path", nargs="?", type=Path, help="boot config (JSON)")
    snippet_cmd = commands.add_parser(
        "containerd-config",
        help="print the containerd config (proxy plugin and CRI) that points at this snapshotter",
    )
    snippet_cmd.add_argument("--config", type=Path, help="boot config (JSON)")
    snippet_cmd.add_argument("--address", help="unix socket path (overrides the config)")
    snippet_cmd.add_argument("--name", default="overlaybd", help="snapshotter name in containerd")
    snippet_cmd.add_argument(
        "--config-version",
        type=int,
        choices=CONFIG_VERSIONS,
        default=2,
        help="containerd config version: 2 for containerd 1.6/1.7 (default), 3 for 2.x",
    )
    migrate_cmd = commands.add_parser(
        "migrate", help="with obdsnap stopped, hand the root back to the Go snapshotter"
    )
    migrate_cmd.add_argument("--config", type=Path, help="boot config (JSON)")
    migrate_cmd.add_argument("--root", help="root directory (overrides the config)")
    migrate_cmd.add_argument("--to", choices=["go"], required=True, help="metadata format")
    health_cmd = commands.add_parser(
        "health", help="one Stat against a running obdsnap: exit 0 if it answers, 1 if not"
    )
    health_cmd.add_argument("--config", type=Path, help="boot config (JSON)")
    health_cmd.add_argument("--address", help="unix socket path (overrides the config)")
    health_cmd.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for the answer (default {DEFAULT_TIMEOUT_S:g})",
    )
    _add_inspection_commands(commands)
    attacher.add_commands(commands)
    return parser, frozenset(commands.choices)


def _add_inspection_commands(commands: argparse._SubParsersAction[Any]) -> None:
    helps = {
        "status": "read-only: version, root, socket, snapshots, devices, intents, last reconcile",
        "ls": "read-only: the snapshots, with storage type, device and mount",
        "devices": "read-only: every configfs target, its snapshot and overlaybd's result",
        "intents": "read-only: operations begun and not ended",
    }
    for name in inspection.COMMANDS:
        cmd = commands.add_parser(name, help=helps[name])
        cmd.add_argument("--config", type=Path, help="boot config (JSON)")
        cmd.add_argument("--root", help="root directory (overrides the config)")
        cmd.add_argument("--json", action="store_true", help="JSON for scripts, not a table")
        if name == "status":
            cmd.add_argument("--address", help="unix socket path (overrides the config)")
            cmd.add_argument(
                "--timeout",
                type=float,
                default=inspection.STATUS_TIMEOUT_S,
                help=f"seconds to wait for the socket (default {inspection.STATUS_TIMEOUT_S:g})",
            )
        if name == "ls":
            cmd.add_argument(
                "--filter",
                action="append",
                help="containerd filter, e.g. 'kind==active' (repeat for OR)",
            )
            cmd.add_argument(
                "--usage", action="store_true", help="add disk usage (walks active snapshots)"
            )
