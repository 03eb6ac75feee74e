"""The containerd config that makes containerd (and its CRI plugin) use obdsnap.

Printed by ``obdsnap containerd-config`` as tables only, so it can be appended
to a config.toml whose top-level keys (``version = 2``/``3``) come first.

containerd reads the proxy plugin's ``exports`` from 1.7 on (1.6 ignores the
key) and reports them through its introspection API; the CRI plugin takes the
image filesystem of kubelet's stats from the snapshotter's exported ``root``
when it is not under containerd's own directory. The CRI settings live in
``[plugins."io.containerd.grpc.v1.cri".containerd]`` for config version 2
(containerd 1.x) and in ``[plugins."io.containerd.cri.v1.images"]`` for
version 3 (containerd 2.x); both default ``disable_snapshot_annotations`` to
true, which keeps the remote-layer labels from ever reaching the snapshotter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CONFIG_VERSIONS = (2, 3)
# containerd's identifier rule (identifiers.Validate): safe as a path component,
# a plugin ID (io.containerd.snapshotter.v1.<name>) and a --snapshotter value.
_NAME = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")
MAX_NAME_LENGTH = 76
# containerd's own snapshotters: a proxy plugin with one of their names makes
# containerd panic at start-up (plugin IDs must be unique).
BUILTIN_SNAPSHOTTERS = (
    "aufs",
    "blockfile",
    "btrfs",
    "devmapper",
    "erofs",
    "native",
    "overlayfs",
    "windows",
    "windows-lcow",
    "zfs",
)
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
    '"': '\\"',
    "\\": "\\\\",
}
CRI_TABLES = {
    2: ("plugins", "io.containerd.grpc.v1.cri", "containerd"),
    3: ("plugins", "io.containerd.cri.v1.images"),
}
CONTAINERD_RELEASES = {2: "containerd 1.6/1.7", 3: "containerd 2.x"}


class ContainerdConfigError(ValueError):
    """The config cannot be written for containerd; the message says why."""


@dataclass(frozen=True)
class ProxySnapshotter:
    name: str  # the snapshotter's name in containerd
    address: str  # obdsnap's socket
    root: str  # obdsnap's root, exported to the CRI plugin


def check_snapshotter_name(name: str) -> None:
    """ContainerdConfigError unless containerd can use ``name`` as a proxy snapshotter."""
    if not name:
        raise ContainerdConfigError("snapshotter name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ContainerdConfigError(
            f"snapshotter name {name!r} is longer than {MAX_NAME_LENGTH} characters"
        )
    if not _NAME.fullmatch(name):
        raise ContainerdConfigError(
            f"snapshotter name {name!r} is not usable by containerd: letters and digits, "
            "with single '.', '_' or '-' between them"
        )
    if name in BUILTIN_SNAPSHOTTERS:
        raise ContainerdConfigError(
            f"snapshotter name {name!r} is one of containerd's own snapshotters"
        )


def containerd_config(snapshotter: ProxySnapshotter, config_version: int = 2) -> str:
    """The TOML tables for ``snapshotter``, for a containerd config of ``config_version``."""
    if config_version not in CONFIG_VERSIONS:
        raise ContainerdConfigError(
            f"config version must be one of {', '.join(map(str, CONFIG_VERSIONS))}"
        )
    check_snapshotter_name(snapshotter.name)
    release = CONTAINERD_RELEASES[config_version]
    cri_table = table_header(CRI_TABLES[config_version])
    lines = [
        f"# {release}: merge into /etc/containerd/config.toml (version = {config_version}),",
        "# then restart containerd. Where the file has a table of these already, set the",
        "# keys in it: TOML refuses a table defined twice.",
        '# The address must be obdsnap\'s "address". exports.root (read by containerd 1.7',
        "# and later) lets the CRI plugin report the image filesystem (kubelet's stats).",
        table_header(("proxy_plugins", snapshotter.name)),
        '  type = "snapshot"',
        f"  address = {toml_string(snapshotter.address)}",
        f"  exports = {{ root = {toml_string(snapshotter.root)} }}",
        "",
        "# CRI (Kubernetes): pull and run with obdsnap. disable_snapshot_annotations",
        "# defaults to true, and then the labels of remote (lazily loaded) layers never",
        "# reach the snapshotter: every image would be downloaded in full.",
        cri_table,
        f"  snapshotter = {toml_string(snapshotter.name)}",
        "  disable_snapshot_annotations = false",
    ]
    return "\n".join(lines) + "\n"


def table_header(path: tuple[str, ...]) -> str:
    return "[" + ".".join(toml_key(part) for part in path) + "]"


def toml_key(key: str) -> str:
    """A TOML key: bare where the grammar allows it, else a quoted basic string."""
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


def toml_string(value: str) -> str:
    """A TOML basic string: backslash, quote and every control character escaped."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ContainerdConfigError(f"{value!r} is not valid UTF-8") from None
    return '"' + "".join(_escape(char) for char in value) + '"'


def _escape(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return f"\\u{ord(char):04x}"
    return char
