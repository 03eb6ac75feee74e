"""The units in deploy/: systemd's own parser accepts them, and they say what obdsnap needs.

obdsnap mounts (overlays, block devices) for containerd: a unit setting that
puts obdsnap in a private mount namespace would hide every mount from
containerd, and every container start would fail. Those settings are forbidden.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from obdsnap.config import DEFAULT_ADDRESS as CONFIG_ADDRESS
from obdsnap.server import DRAIN_TIMEOUT_S

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SERVICE = DEPLOY / "obdsnap.service"
SOCKET = DEPLOY / "obdsnap.socket"
EXEC_START = "/usr/local/bin/obdsnap serve --config /etc/overlaybd-snapshotter/config.json"
DEFAULT_ADDRESS = "/run/overlaybd-snapshotter/overlaybd.sock"

# systemd.exec(5) (systemd 252): every setting that runs the unit's processes in a
# mount namespace of their own, by itself or by what it implies.
MOUNT_NAMESPACE_SETTINGS = (
    "RootDirectory",
    "RootImage",
    "RootImageOptions",
    "RootHash",
    "RootHashSignature",
    "RootVerity",
    "MountAPIVFS",
    "ProtectProc",
    "ProcSubset",
    "BindPaths",
    "BindReadOnlyPaths",
    "MountImages",
    "ExtensionImages",
    "ExtensionDirectories",
    "DynamicUser",  # implies ProtectSystem=strict, ProtectHome=read-only, PrivateTmp
    "ProtectSystem",
    "ProtectHome",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "ExecPaths",
    "NoExecPaths",
    "ReadWriteDirectories",  # the old names of the *Paths= settings
    "ReadOnlyDirectories",
    "InaccessibleDirectories",
    "TemporaryFileSystem",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateNetwork",  # a private /sys goes with the network namespace
    "NetworkNamespacePath",
    "PrivateIPC",
    "IPCNamespacePath",
    "PrivateUsers",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "PrivateMounts",
    "MountFlags",
    "LogNamespace",
    "JoinsNamespaceOf",
)
# Not a mount namespace, but they take obdsnap's devices or privileges away.
BREAKING_SETTINGS = (
    "ProtectClock",  # implies DeviceAllow=char-rtc r: no loop or SCSI disk is usable
    "DevicePolicy",
    "DeviceAllow",
    "User",
    "CapabilityBoundingSet",
    "RestrictSUIDSGID",
)


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections → key → values (a key may repeat), as systemd reads a unit file."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def settings(path: Path, section: str) -> dict[str, list[str]]:
    return parse_unit(path).get(section, {})


def words(values: list[str]) -> list[str]:
    return [word for value in values for word in value.split()]


def test_systemd_analyze_verify_accepts_both_units(tmp_path: Path) -> None:
    """systemd's own parser: no warning at all, ExecStart pointing at a binary that exists."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not found (systemd)")
    shutil.copy(SOCKET, tmp_path / SOCKET.name)
    text = SERVICE.read_text()
    assert EXEC_START in text
    python = shutil.which("python3")
    assert python is not None
    (tmp_path / SERVICE.name).write_text(text.replace("/usr/local/bin/obdsnap", python))
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(tmp_path / SERVICE.name), str(tmp_path / SOCKET.name)],
        cwd=tmp_path,
        env={"SYSTEMD_UNIT_PATH": f"{tmp_path}:", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "" and done.stderr.strip() == "", done.stdout + done.stderr


def test_verify_would_catch_a_bad_unit(tmp_path: Path) -> None:
    """The check above can fail: a bad value is reported."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not found (systemd)")
    bad = tmp_path / SERVICE.name
    bad.write_text(SERVICE.read_text().replace("Type=notify", "Type=notified"))
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(bad)],
        cwd=tmp_path,
        env={"SYSTEMD_UNIT_PATH": f"{tmp_path}:{DEPLOY}:", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Type" in done.stderr or "service type" in done.stderr, done.stderr


def test_service_is_notify_and_socket_activated() -> None:
    unit = settings(SERVICE, "Unit")
    service = settings(SERVICE, "Service")
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert "obdsnap.socket" in words(unit["Requires"])
    assert "obdsnap.socket" in words(unit["After"])
    assert "containerd.service" in words(unit["Before"])
    assert "overlaybd-tcmu.service" in words(unit["After"])
    assert "overlaybd-tcmu.service" in words(unit["Wants"])
    assert service["ExecStart"] == [EXEC_START]


def test_service_loads_the_tcmu_modules_without_requiring_them() -> None:
    pre = settings(SERVICE, "Service")["ExecStartPre"]
    # "-": a kernel without them still starts obdsnap (overlayfs layers need neither).
    assert "-/sbin/modprobe target_core_user" in pre
    assert "-/sbin/modprobe tcm_loop" in pre


def test_service_restarts_and_stops_gracefully() -> None:
    service = settings(SERVICE, "Service")
    assert service["Restart"] == ["always"]
    assert service["OOMScoreAdjust"] == ["-999"]
    assert service["KillMode"] == ["mixed"]
    assert service.get("KillSignal", ["SIGTERM"]) == ["SIGTERM"]
    assert int(service["LimitNOFILE"][0]) >= 65536
    stop_timeout = service["TimeoutStopSec"][0]
    assert stop_timeout.isdecimal() and int(stop_timeout) > DRAIN_TIMEOUT_S + 5


def test_service_is_enabled_with_its_socket() -> None:
    install = settings(SERVICE, "Install")
    assert install["WantedBy"] == ["multi-user.target"]
    assert "obdsnap.socket" in words(install["Also"])


def test_socket_unit_listens_where_obdsnap_is_configured() -> None:
    sock = settings(SOCKET, "Socket")
    assert CONFIG_ADDRESS == DEFAULT_ADDRESS
    assert sock["ListenStream"] == [DEFAULT_ADDRESS]
    assert sock["SocketMode"] == ["0600"]
    assert sock["DirectoryMode"] == ["0700"]
    assert sock.get("Accept", ["no"]) == ["no"]  # one obdsnap takes the listening socket
    assert sock.get("Service", ["obdsnap.service"]) == ["obdsnap.service"]
    assert "sockets.target" in words(settings(SOCKET, "Install")["WantedBy"])


@pytest.mark.parametrize("unit", [SERVICE, SOCKET], ids=lambda path: path.name)
def test_no_setting_creates_a_private_mount_namespace(unit: Path) -> None:
    for section, keys in parse_unit(unit).items():
        found = sorted(set(keys) & set(MOUNT_NAMESPACE_SETTINGS))
        assert not found, f"{unit.name} [{section}]: {found} hide obdsnap's mounts from containerd"


@pytest.mark.parametrize("unit", [SERVICE, SOCKET], ids=lambda path: path.name)
def test_no_setting_takes_devices_or_privileges_away(unit: Path) -> None:
    for section, keys in parse_unit(unit).items():
        found = sorted(set(keys) & set(BREAKING_SETTINGS))
        assert not found, f"{unit.name} [{section}]: {found} take obdsnap's devices away"


def test_the_forbidden_list_catches_a_planted_setting(tmp_path: Path) -> None:
    planted = tmp_path / SERVICE.name
    planted.write_text(SERVICE.read_text().replace("[Service]\n", "[Service]\nPrivateTmp=yes\n"))
    keys = parse_unit(planted)["Service"]
    assert set(keys) & set(MOUNT_NAMESPACE_SETTINGS) == {"PrivateTmp"}
