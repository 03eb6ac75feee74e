"""Boot config: the Go overlaybd snapshotter's config.json (v0.6.0 to v1.4.4), read strictly.

Every key of the Go snapshotter up to v1.4.4 is read with its type and default
(DESIGN-v1 §1); unknown keys are logged and ignored, so every Go config starts.
A known key with a bad type or value stops start-up with one line naming it
(DESIGN-v1 §22: obdsnap refuses what Go would only trip over later).
"""

from __future__ import annotations

import grp
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from obdsnap.config_reader import ConfigError as ConfigError
from obdsnap.config_reader import Reader as _Reader
from obdsnap.sizes import ram_in_bytes

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = Path("/etc/overlaybd-snapshotter/config.json")
DEFAULT_ROOT = "/var/lib/containerd/io.containerd.snapshotter.v1.overlaybd"
DEFAULT_ADDRESS = "/run/overlaybd-snapshotter/overlaybd.sock"
RW_MODES = ("overlayfs", "dir", "dev")
LOG_FORMATS = ("text", "json")
WRITABLE_LAYER_TYPES = ("append", "sparse")
DEVICE_BACKENDS = ("tcmu",)  # obdsnap's own: how a snapshot's block device is set up
RUNTIME_TYPES = ("containerd", "docker")
WRITABLE_COMMITS = ("compress", "seal")  # obdsnap's own: v0.6.0's commit, or v1.4.4's (§8)
TURBO_FS_TYPES = ("ext4", "erofs")
DEFAULT_TURBO_FS_TYPES = ("erofs", "ext4")
NO_TENANT = -1
DEFAULT_QUOTA_PROJECT_ID = 16777216  # the project ID every Go v1.x rootfs quota uses
MAX_PROJECT_ID = 2**32 - 2  # (u32)-1 is "no project"
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


@dataclass(frozen=True)
class MirrorRegistry:
    """A ``mirrorRegistry`` entry: blobs of an ``insecure`` host are fetched over http (§18)."""

    host: str
    insecure: bool = False


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
    # Go v1.x keys (DESIGN-v1 §1).
    async_remove: bool = False  # Remove leaves the directory to Cleanup (§9)
    mirror_registry: tuple[MirrorRegistry, ...] = ()
    default_fs_type: str = "ext4"  # a block layer's fs without a blob-fs-type label (§11)
    rootfs_quota: str = ""  # project-quota size of every container rootfs, "" = none (§16)
    tenant: int = NO_TENANT  # picks the configfs HBA and WWN prefix (§15)
    turbo_fs_type: tuple[str, ...] = DEFAULT_TURBO_FS_TYPES  # TurboOCI fs metas, preferred first
    runtime_type: str = "containerd"  # "docker": moby's containerd image store (§17)
    # obdsnap's own (DESIGN-v1 §22).
    writable_commit: str = "compress"  # "seal": v1.4.4's commit of a writable layer (§8)
    quota_project_id: int = DEFAULT_QUOTA_PROJECT_ID
    quota_tool_dir: str = ""  # lsattr, chattr and setquota; "" = found on PATH (§16)
    quota_mountinfo: str = "/proc/self/mountinfo"  # where quota reads the mount's options
    # The kernel's EROFS check (DESIGN-v1 §12 rule 4): where it is read and what loads it.
    proc_filesystems: str = "/proc/filesystems"
    modprobe_command: str = "modprobe"

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
            "asyncRemove": self.async_remove,
            "mirrorRegistry": [
                {"host": mirror.host, "insecure": mirror.insecure}
                for mirror in self.mirror_registry
            ],
            "defaultFsType": self.default_fs_type,
            "rootfsQuota": self.rootfs_quota,
            "tenant": self.tenant,
            "turboFsType": list(self.turbo_fs_type),
            "runtimeType": self.runtime_type,
            "writableCommit": self.writable_commit,
            "quotaProjectId": self.quota_project_id,
            "quotaToolDir": self.quota_tool_dir,
            "quotaMountinfo": self.quota_mountinfo,
            "procFilesystems": self.proc_filesystems,
            "modprobeCommand": self.modprobe_command,
        }

    @property
    def docker_mode(self) -> bool:
        """Docker mode (§17) needs both: Go compares the two literal strings."""
        return self.runtime_type == "docker" and self.rw_mode == "overlayfs"

    def insecure_registry(self, host: str) -> bool:
        """Whether blobs of ``host`` (after docker.io's rewrite, port included) use http."""
        return any(mirror.insecure and mirror.host == host for mirror in self.mirror_registry)

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
        async_remove=reader.get("asyncRemove", bool, default.async_remove),
        mirror_registry=_mirror_registry(reader.get_list("mirrorRegistry")),
        default_fs_type=reader.get("defaultFsType", str, default.default_fs_type),
        rootfs_quota=reader.get("rootfsQuota", str, default.rootfs_quota),
        tenant=reader.get("tenant", int, default.tenant),
        turbo_fs_type=_turbo_fs_types(reader.get_list("turboFsType")),
        runtime_type=reader.get("runtimeType", str, default.runtime_type),
        writable_commit=reader.get("writableCommit", str, default.writable_commit),
        quota_project_id=reader.get("quotaProjectId", int, default.quota_project_id),
        quota_tool_dir=reader.get("quotaToolDir", str, default.quota_tool_dir),
        quota_mountinfo=reader.get("quotaMountinfo", str, default.quota_mountinfo),
        proc_filesystems=reader.get("procFilesystems", str, default.proc_filesystems),
        modprobe_command=reader.get("modprobeCommand", str, default.modprobe_command),
    )
    _check_v1_values(config)
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


def _mirror_registry(raw: list[Any] | None) -> tuple[MirrorRegistry, ...]:
    mirrors = []
    for index, entry in enumerate(raw or ()):
        where = f"mirrorRegistry[{index}]."
        if not isinstance(entry, dict):
            raise ConfigError(f'config: "mirrorRegistry[{index}]": expected an object')
        entry_reader = _Reader(entry, prefix=where)
        host = entry_reader.get("host", str, "")
        if not host:
            raise ConfigError(f'config: "{where}host": must not be empty')
        mirrors.append(MirrorRegistry(host, entry_reader.get("insecure", bool, False)))
        entry_reader.warn_unknown()
    return tuple(mirrors)


def _turbo_fs_types(raw: list[Any] | None) -> tuple[str, ...]:
    """Go's order: the list as given, then ext4 and erofs appended if missing.

    An absent key keeps the default; a null or empty list ends as ext4, erofs.
    """
    if raw is None:
        return DEFAULT_TURBO_FS_TYPES
    chosen: list[str] = []
    for index, value in enumerate(raw):
        if not isinstance(value, str):
            raise ConfigError(
                f'config: "turboFsType[{index}]": expected a string, got {json.dumps(value)}'
            )
        _check_choice(f'"turboFsType[{index}]"', value, TURBO_FS_TYPES)
        if value not in chosen:
            chosen.append(value)
    return tuple(chosen + [fs for fs in TURBO_FS_TYPES if fs not in chosen])


def _check_v1_values(config: BootConfig) -> None:
    _check_choice('"runtimeType"', config.runtime_type, RUNTIME_TYPES)
    _check_choice('"writableCommit"', config.writable_commit, WRITABLE_COMMITS)
    if not config.default_fs_type.strip():
        raise ConfigError('config: "defaultFsType": must not be empty')
    if config.tenant < NO_TENANT:
        raise ConfigError(f'config: "tenant": must be -1 or more (got {config.tenant})')
    if not 1 <= config.quota_project_id <= MAX_PROJECT_ID:
        raise ConfigError(
            f'config: "quotaProjectId": must be 1-{MAX_PROJECT_ID} (got {config.quota_project_id})'
        )
    for key, path in (
        ("quotaToolDir", config.quota_tool_dir or "/"),
        ("quotaMountinfo", config.quota_mountinfo),
        ("procFilesystems", config.proc_filesystems),
    ):
        if not path.startswith("/"):
            raise ConfigError(f'config: "{key}": must be an absolute path (got {path!r})')
    if not config.modprobe_command.strip():
        raise ConfigError('config: "modprobeCommand": must not be empty')
    if config.rootfs_quota:
        try:
            ram_in_bytes(config.rootfs_quota)
        except ValueError as exc:
            raise ConfigError(f'config: "rootfsQuota": {exc}') from None


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
