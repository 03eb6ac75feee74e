"""Boot config: the Go overlaybd snapshotter's config.json, read strictly.

Unknown keys (later Go versions add ``tenant``, ``asyncRemove``, ...) are
logged and ignored, so every Go config starts; a known key with a bad type or
value stops start-up with one line naming it.
"""

from __future__ import annotations

import grp
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = Path("/etc/overlaybd-snapshotter/config.json")
DEFAULT_ROOT = "/var/lib/containerd/io.containerd.snapshotter.v1.overlaybd"
DEFAULT_ADDRESS = "/run/overlaybd-snapshotter/overlaybd.sock"
RW_MODES = ("overlayfs", "dir", "dev")
LOG_FORMATS = ("text", "json")
WRITABLE_LAYER_TYPES = ("append", "sparse")
DEVICE_BACKENDS = ("tcmu",)  # obdsnap's own: how a snapshot's block device is set up
# logrus level names, as the Go snapshotter's "verbose" accepts them.
LOG_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}

T = TypeVar("T")


class ConfigError(Exception):
    """A config that cannot be used; the message names the offending key."""


@dataclass(frozen=True)
class ExporterConfig:
    enable: bool = False
    uri_prefix: str = "/metrics"
    port: int = 9863
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class BootConfig:
    root: str = DEFAULT_ROOT
    address: str = DEFAULT_ADDRESS
    log_level: str = "info"
    log_report_caller: bool = False
    log_format: str = "text"  # obdsnap's own: "text" or "json", one line a record
    rw_mode: str = "overlayfs"
    auto_remove_dev: bool = False
    exporter: ExporterConfig = field(default_factory=ExporterConfig)
    writable_layer_type: str = "append"
    overlaybd_util_bin_dir: str = "/opt/overlaybd/bin"
    # obdsnap's own keys: the device backend, and where the TCMU backend's kernel interfaces live.
    device_backend: str = "tcmu"
    configfs_root: str = "/sys/kernel/config"
    sysfs_root: str = "/sys"
    socket_group: str = ""  # group allowed to use the socket (mode 0660); root only if empty
    max_concurrent_requests: int = 1024
    max_concurrent_device_ops: int = 32

    def as_json(self) -> dict[str, Any]:
        """The config under the keys of config.json, every default filled in."""
        return {
            "root": self.root,
            "address": self.address,
            "verbose": self.log_level,
            "logReportCaller": self.log_report_caller,
            "logFormat": self.log_format,
            "rwMode": self.rw_mode,
            "autoRemoveDev": self.auto_remove_dev,
            "exporterConfig": {
                "enable": self.exporter.enable,
                "uriPrefix": self.exporter.uri_prefix,
                "port": self.exporter.port,
                "host": self.exporter.host,
            },
            "writableLayerType": self.writable_layer_type,
            "overlaybd_util_bin_dir": self.overlaybd_util_bin_dir,
            "deviceBackend": self.device_backend,
            "configfsRoot": self.configfs_root,
            "sysfsRoot": self.sysfs_root,
            "socketGroup": self.socket_group,
            "maxConcurrentRequests": self.max_concurrent_requests,
            "maxConcurrentDeviceOps": self.max_concurrent_device_ops,
        }

    @property
    def python_log_level(self) -> int:
        return LOG_LEVELS[self.log_level.lower()]

    def checked(self) -> BootConfig:
        """The config with its address trimmed, or ConfigError for an unusable one."""
        address = self.address.strip()
        if not address:
            raise ConfigError('config: "address": must not be empty')
        if not self.root.strip():
            raise ConfigError('config: "root": must not be empty')
        return replace(self, address=address)


def load_config(
    path: Path | None,
    *,
    root: str | None = None,
    address: str | None = None,
    log_level: str | None = None,
    log_format: str | None = None,
) -> BootConfig:
    """Read ``path`` (or the default path when it exists), then apply command-line overrides."""
    raw: Mapping[str, Any] = {}
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    if path is not None:
        raw = _read_json(path)
    config = parse_config(raw)
    if root is not None:
        config = replace(config, root=root)
    if address is not None:
        config = replace(config, address=address)
    if log_level is not None:
        _check_choice("--log-level", log_level.lower(), tuple(LOG_LEVELS))
        config = replace(config, log_level=log_level)
    if log_format is not None:
        _check_choice("--log-format", log_format, LOG_FORMATS)
        config = replace(config, log_format=log_format)
    return config.checked()


def _read_json(path: Path) -> Mapping[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config {path}: cannot read: {exc.strerror or exc}") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config {path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path}: must be a JSON object")
    return raw


def parse_config(raw: Mapping[str, Any]) -> BootConfig:
    default = BootConfig()
    reader = _Reader(raw, prefix="")
    exporter_raw = reader.get("exporterConfig", dict, {})
    exporter_reader = _Reader(exporter_raw, prefix="exporterConfig.")
    exporter = ExporterConfig(
        enable=exporter_reader.get("enable", bool, default.exporter.enable),
        uri_prefix=exporter_reader.get("uriPrefix", str, default.exporter.uri_prefix),
        port=exporter_reader.get("port", int, default.exporter.port),
        host=exporter_reader.get("host", str, default.exporter.host),
    )
    if not 0 < exporter.port < 65536:
        raise ConfigError(f'config: "exporterConfig.port": must be 1-65535 (got {exporter.port})')
    if not exporter.uri_prefix.startswith("/"):
        raise ConfigError('config: "exporterConfig.uriPrefix": must start with "/"')
    config = BootConfig(
        root=reader.get("root", str, default.root),
        address=reader.get("address", str, default.address),
        log_level=reader.get("verbose", str, default.log_level),
        log_report_caller=reader.get("logReportCaller", bool, default.log_report_caller),
        log_format=reader.get("logFormat", str, default.log_format),
        rw_mode=reader.get("rwMode", str, default.rw_mode),
        auto_remove_dev=reader.get("autoRemoveDev", bool, default.auto_remove_dev),
        exporter=exporter,
        writable_layer_type=reader.get("writableLayerType", str, default.writable_layer_type),
        overlaybd_util_bin_dir=reader.get(
            "overlaybd_util_bin_dir", str, default.overlaybd_util_bin_dir
        ),
        device_backend=reader.get("deviceBackend", str, default.device_backend),
        configfs_root=reader.get("configfsRoot", str, default.configfs_root),
        sysfs_root=reader.get("sysfsRoot", str, default.sysfs_root),
        socket_group=reader.get("socketGroup", str, default.socket_group),
        max_concurrent_requests=reader.get(
            "maxConcurrentRequests", int, default.max_concurrent_requests
        ),
        max_concurrent_device_ops=reader.get(
            "maxConcurrentDeviceOps", int, default.max_concurrent_device_ops
        ),
    )
    for key, value in (
        ("maxConcurrentRequests", config.max_concurrent_requests),
        ("maxConcurrentDeviceOps", config.max_concurrent_device_ops),
    ):
        if value < 1:
            raise ConfigError(f'config: "{key}": must be at least 1 (got {value})')
    if config.socket_group:
        socket_group_id(config.socket_group)
    _check_choice('"verbose"', config.log_level.lower(), tuple(LOG_LEVELS))
    _check_choice('"logFormat"', config.log_format, LOG_FORMATS)
    _check_choice('"rwMode"', config.rw_mode, RW_MODES)
    _check_choice('"writableLayerType"', config.writable_layer_type, WRITABLE_LAYER_TYPES)
    _check_choice('"deviceBackend"', config.device_backend, DEVICE_BACKENDS)
    reader.warn_unknown()
    exporter_reader.warn_unknown()
    return config


def socket_group_id(group: str) -> int:
    """The gid of a group given by name or number; ConfigError if there is no such group."""
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f'config: "socketGroup": no group {group!r}') from None


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"config: {name}: must be one of {', '.join(choices)} (got {value!r})")


class _Reader:
    """Typed access to one JSON object; remembers which keys were read.

    Keys match case-insensitively when there is no exact match, as Go's
    encoding/json matches them, so ``"RwMode"`` means what it means to Go.
    """

    def __init__(self, raw: Mapping[str, Any], prefix: str) -> None:
        self._raw = raw
        self._prefix = prefix
        self._read: set[str] = set()

    def _find(self, key: str) -> str | None:
        if key in self._raw:
            return key
        folded = key.casefold()
        return next((name for name in self._raw if name.casefold() == folded), None)

    def get(self, key: str, kind: type[T], default: T) -> T:
        found = self._find(key)
        if found is None:
            return default
        self._read.add(found)
        key = found
        if self._raw[key] is None:
            return default
        value = self._raw[key]
        # bool is an int in Python; JSON true is not a port number.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(
                f'config: "{self._prefix}{key}": expected {_json_type(kind)}, '
                f"got {json.dumps(value)}"
            )
        return value

    def warn_unknown(self) -> None:
        for key in sorted(set(self._raw) - self._read):
            log.warning("config: ignoring unknown key %r", self._prefix + key)


def _json_type(kind: type) -> str:
    names: dict[type, str] = {
        bool: "a boolean",
        int: "an integer",
        str: "a string",
        dict: "an object",
    }
    return names.get(kind, "a value")
