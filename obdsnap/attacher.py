"""``obdsnap attach`` and ``obdsnap detach``: overlaybd devices without containerd (§21).

``attach --id N --config F`` sets up device N from the overlaybd config F exactly
as the snapshotter does (TCMU target, tcm_loop LUN, SCSI disk with its timeout),
trying up to 5 times 1 s apart, and prints the device path. It neither makes a
filesystem nor mounts. ``detach --id N`` removes the device's configfs entries.

The device names are those of tenant -1 (as Go's overlaybd-attacher), unless
``--tenant`` says otherwise. Where configfs and sysfs are comes from obdsnap's
boot config (``configfsRoot``, ``sysfsRoot``; ``--boot-config``, else the
default path). Unlike Go, an ID whose device is already set up is refused on
attach, and a device that a snapshotter set up for its own snapshot is refused
on detach unless ``--force``: either would pull a device from under a container.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from obdsnap.config import NO_TENANT, ConfigError, load_config
from obdsnap.device.backend import AttachError
from obdsnap.device.tcmu import TcmuBackend, dev_config
from obdsnap.layout import Layout
from obdsnap.logs import configure_logging

log = logging.getLogger(__name__)

COMMANDS = ("attach", "detach")
ATTACH_ATTEMPTS = 5
ATTACH_RETRY_INTERVAL_S = 1.0
DEFAULT_RESULT_FILE = "init-debug.log"


class AttacherError(Exception):
    """Why attach or detach did nothing (or undid what it did): one line for the operator."""


@dataclass(frozen=True)
class DeviceRequest:
    """What ``attach`` hands the kernel: the ``dev_config`` text, and where overlaybd reports."""

    dev_config: str
    result_file: Path


def device_request(device_id: int, config: Path, *, with_devid: bool) -> DeviceRequest:
    """The device for overlaybd config ``config``, checked before anything is set up."""
    try:
        text = config.read_text()
    except OSError as exc:
        raise AttacherError(f"config file does not exist: {config}: {exc.strerror}") from exc
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise AttacherError(f"invalid JSON config file {config}: {exc}") from exc
    if not isinstance(document, dict):
        raise AttacherError(f"invalid JSON config file {config}: not a JSON object")
    result = document.get("resultFile") or ""
    if not isinstance(result, str):
        raise AttacherError(f"invalid JSON config file {config}: resultFile must be a string")
    absolute = Path(os.path.abspath(config))
    result_file = absolute.parent / (result or DEFAULT_RESULT_FILE)
    return DeviceRequest(dev_config(absolute, device_id if with_devid else None), result_file)


async def attach(backend: TcmuBackend, device_id: int, request: DeviceRequest) -> Path:
    """Set up device ``device_id``; its path. Up to 5 tries 1 s apart, each undone on failure."""
    if await backend.has_entries(device_id):
        owner = await backend.owner(device_id)
        raise AttacherError(
            f"{backend.describe(device_id)} is already set up "
            f"({owner or 'no dev_config yet'}): detach it first or choose another ID"
        )
    last: AttachError | None = None
    for attempt in range(1, ATTACH_ATTEMPTS + 1):
        if last is not None:
            log.warning("retry %d/%d after: %s", attempt, ATTACH_ATTEMPTS, last)
            await asyncio.sleep(ATTACH_RETRY_INTERVAL_S)
        try:
            return await backend.attach_config(device_id, request.dev_config, request.result_file)
        except AttachError as exc:
            last = exc
    raise AttacherError(f"failed to attach device after {ATTACH_ATTEMPTS} attempts: {last}")


async def detach(backend: TcmuBackend, device_id: int, *, force: bool) -> None:
    """Remove the configfs entries of device ``device_id``; nothing there is fine."""
    owner = await backend.owner(device_id)
    if not force and owner is not None and _snapshotter_device(owner, device_id):
        raise AttacherError(
            f"{backend.describe(device_id)} is the device of a snapshotter's snapshot "
            f"({owner}): remove the snapshot instead, or pass --force"
        )
    if not await backend.has_entries(device_id):
        log.info("%s is not set up: nothing to detach", backend.describe(device_id))
        return
    await backend.detach(device_id)
    log.info("%s detached", backend.describe(device_id))


def _snapshotter_device(owner: str, device_id: int) -> bool:
    """Whether ``dev_config`` names snapshot ``device_id``'s own config under a snapshotter root."""
    config = Path(owner.partition("/")[2])
    if len(config.parents) < 4:
        return False
    return Layout(config.parents[3]).block(device_id).config == config


def main(args: argparse.Namespace) -> int:
    """Run ``attach`` or ``detach``; the exit status (errors go to stderr as one line)."""
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        backend = _backend(args.boot_config, args.tenant)
        if args.command == "attach":
            request = device_request(args.id, args.config, with_devid=args.with_devid)
            log.info(
                "attaching device %d: tenant %d, %s, result file %s",
                args.id,
                args.tenant,
                request.dev_config,
                request.result_file,
            )
            print(asyncio.run(attach(backend, args.id, request)))
        else:
            asyncio.run(detach(backend, args.id, force=args.force))
    except (AttacherError, ConfigError) as exc:
        print(f"obdsnap {args.command}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"obdsnap {args.command}: failed to {args.command} device: {exc}", file=sys.stderr)
        return 1
    return 0


def _backend(boot_config: Path | None, tenant: int) -> TcmuBackend:
    if tenant < NO_TENANT:
        raise AttacherError(f"--tenant must be -1 or more (got {tenant})")
    config = load_config(boot_config)
    return TcmuBackend(Path(config.configfs_root), Path(config.sysfs_root), tenant=tenant)


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """The ``attach`` and ``detach`` subcommands."""
    attach_cmd = commands.add_parser(
        "attach", help="set up an overlaybd device from a config.v1.json; prints its path"
    )
    attach_cmd.add_argument("--config", type=Path, required=True, help="overlaybd config.v1.json")
    attach_cmd.add_argument(
        "--with-devid", action="store_true", help="append ';<id>' to the device's dev_config"
    )
    detach_cmd = commands.add_parser("detach", help="remove an overlaybd device's configfs entries")
    detach_cmd.add_argument(
        "--force", action="store_true", help="detach even a snapshotter's own device"
    )
    for cmd in (attach_cmd, detach_cmd):
        cmd.add_argument("--id", type=_device_id, required=True, help="device (snapshot) ID")
        cmd.add_argument(
            "--tenant",
            type=int,
            default=NO_TENANT,
            help="device names of this tenant (default -1: HBA user_999999999, WWN naa.199...)",
        )
        cmd.add_argument(
            "--boot-config",
            type=Path,
            help="obdsnap boot config whose configfsRoot and sysfsRoot to use",
        )
        cmd.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _device_id(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"not a device ID (a positive integer): {text!r}")
    return int(text)
