"""Tests of obdsnap.config: the Go snapshotter's config.json read strictly (DESIGN §9)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from obdsnap import config as config_module
from obdsnap.config import BootConfig, ConfigError, ExporterConfig, load_config, parse_config

REAL_DEFAULT_CONFIG_PATH = config_module.DEFAULT_CONFIG_PATH


@pytest.fixture(autouse=True)
def no_default_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The machine's /etc config must never leak into a test."""
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent" / "config.json")


def write_config(tmp_path: Path, content: Any, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def load(
    tmp_path: Path,
    content: Any,
    *,
    root: str | None = None,
    address: str | None = None,
    log_level: str | None = None,
) -> BootConfig:
    path = write_config(tmp_path, content)
    return load_config(path, root=root, address=address, log_level=log_level)


# ---------------------------------------------------------------------- defaults


def test_defaults_match_design() -> None:
    config = parse_config({})
    assert config.root == "/var/lib/containerd/io.containerd.snapshotter.v1.overlaybd"
    assert config.address == "/run/overlaybd-snapshotter/overlaybd.sock"
    assert config.log_level == "info"
    assert config.python_log_level == logging.INFO
    assert config.log_report_caller is False
    assert config.rw_mode == "overlayfs"
    assert config.auto_remove_dev is False
    assert config.exporter.enable is False
    assert config.exporter.uri_prefix == "/metrics"
    assert config.exporter.port == 9863
    assert config.writable_layer_type == "append"
    assert config.overlaybd_util_bin_dir == "/opt/overlaybd/bin"
    assert config == BootConfig()


def test_default_config_path() -> None:
    assert Path("/etc/overlaybd-snapshotter/config.json") == REAL_DEFAULT_CONFIG_PATH


def test_load_without_path_or_default_file_gives_defaults() -> None:
    assert load_config(None) == BootConfig()


def test_load_without_path_reads_default_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = write_config(tmp_path, {"rwMode": "dir"}, name="default.json")
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", path)
    assert load_config(None).rw_mode == "dir"


def test_empty_object_file_gives_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, {}) == BootConfig()


# ---------------------------------------------------------------------- every Go key


def test_every_key_is_read_with_its_go_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw = {
        "root": "/data/obd",
        "address": "/run/obd/obd.sock",
        "verbose": "debug",
        "logReportCaller": True,
        "rwMode": "dev",
        "autoRemoveDev": True,
        "exporterConfig": {"enable": True, "uriPrefix": "/prom", "port": 9100},
        "writableLayerType": "sparse",
        "overlaybd_util_bin_dir": "/usr/local/overlaybd/bin",
    }
    with caplog.at_level(logging.WARNING):
        config = load(tmp_path, raw)
    assert config == BootConfig(
        root="/data/obd",
        address="/run/obd/obd.sock",
        log_level="debug",
        log_report_caller=True,
        rw_mode="dev",
        auto_remove_dev=True,
        exporter=ExporterConfig(enable=True, uri_prefix="/prom", port=9100),
        writable_layer_type="sparse",
        overlaybd_util_bin_dir="/usr/local/overlaybd/bin",
    )
    assert config.python_log_level == logging.DEBUG
    assert caplog.records == [], "known keys must not be reported as unknown"


@pytest.mark.parametrize("mode", ["overlayfs", "dir", "dev"])
def test_rw_modes(mode: str) -> None:
    assert parse_config({"rwMode": mode}).rw_mode == mode


@pytest.mark.parametrize(
    ("level", "python_level"),
    [
        ("trace", logging.DEBUG),
        ("debug", logging.DEBUG),
        ("info", logging.INFO),
        ("warn", logging.WARNING),
        ("warning", logging.WARNING),
        ("error", logging.ERROR),
        ("fatal", logging.CRITICAL),
        ("panic", logging.CRITICAL),
        ("INFO", logging.INFO),
    ],
)
def test_verbose_levels(level: str, python_level: int) -> None:
    assert parse_config({"verbose": level}).python_log_level == python_level


def test_partial_exporter_config_keeps_other_defaults() -> None:
    exporter = parse_config({"exporterConfig": {"enable": True}}).exporter
    assert exporter.enable is True
    assert exporter.uri_prefix == "/metrics"
    assert exporter.port == 9863


@pytest.mark.parametrize("port", [1, 65535])
def test_port_bounds_accepted(port: int) -> None:
    assert parse_config({"exporterConfig": {"port": port}}).exporter.port == port


# ---------------------------------------------------------------------- unknown keys


def test_unknown_keys_are_warnings_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = {
        "futureKey": 3,
        "tenant": 3,
        "rwMode": "dir",
        "exporterConfig": {"enable": True, "futureKnob": "x"},
    }
    with caplog.at_level(logging.WARNING, logger="obdsnap.config"):
        config = load(tmp_path, raw)
    assert config.rw_mode == "dir"
    assert config.exporter.enable is True
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    text = "\n".join(r.getMessage() for r in warnings)
    for key in ("futureKey", "exporterConfig.futureKnob"):
        assert key in text
    assert "tenant" not in text
    assert len(warnings) == 2
    assert all(r.name == "obdsnap.config" for r in warnings)


# ---------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"rwMode": "rw"}, "rwMode"),
        ({"rwMode": 1}, "rwMode"),
        ({"verbose": "loud"}, "verbose"),
        ({"verbose": True}, "verbose"),
        ({"autoRemoveDev": "yes"}, "autoRemoveDev"),
        ({"autoRemoveDev": 1}, "autoRemoveDev"),
        ({"logReportCaller": "true"}, "logReportCaller"),
        ({"root": 5}, "root"),
        ({"address": ["/a"]}, "address"),
        ({"writableLayerType": "thin"}, "writableLayerType"),
        ({"logFormat": "yaml"}, "logFormat"),
        ({"logFormat": 1}, "logFormat"),
        ({"overlaybd_util_bin_dir": False}, "overlaybd_util_bin_dir"),
        ({"exporterConfig": "on"}, "exporterConfig"),
        ({"exporterConfig": [1]}, "exporterConfig"),
        ({"exporterConfig": {"port": True}}, "exporterConfig.port"),
        ({"exporterConfig": {"port": "9863"}}, "exporterConfig.port"),
        ({"exporterConfig": {"port": 9863.5}}, "exporterConfig.port"),
        ({"exporterConfig": {"port": 0}}, "exporterConfig.port"),
        ({"exporterConfig": {"port": 70000}}, "exporterConfig.port"),
        ({"exporterConfig": {"port": -1}}, "exporterConfig.port"),
        ({"exporterConfig": {"enable": "true"}}, "exporterConfig.enable"),
        ({"exporterConfig": {"uriPrefix": 1}}, "exporterConfig.uriPrefix"),
    ],
)
def test_bad_value_is_an_error_naming_the_key(
    tmp_path: Path, raw: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, raw)
    assert key in str(caught.value)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(raw)


@pytest.mark.parametrize("content", ["[1, 2]", '"config"', "42", "null", "true"])
def test_non_object_json_is_an_error(tmp_path: Path, content: str) -> None:
    path = write_config(tmp_path, content)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, '{\n  "root": "/x",\n  "rwMode": dir\n}\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "line 3" in message
    assert str(path) in message


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    # A directory cannot be read as a file, even by root.
    path = tmp_path / "dir.json"
    path.mkdir()
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_null_values_keep_defaults() -> None:
    config = parse_config({"rwMode": None, "exporterConfig": {"port": None}})
    assert config.rw_mode == "overlayfs"
    assert config.exporter.port == 9863


# ---------------------------------------------------------------------- address, flags


@pytest.mark.parametrize("address", ["", " ", "   \t "])
def test_empty_address_in_file_is_an_error(tmp_path: Path, address: str) -> None:
    with pytest.raises(ConfigError, match="address"):
        load(tmp_path, {"address": address})


@pytest.mark.parametrize("address", ["", "  "])
def test_empty_address_flag_is_an_error(tmp_path: Path, address: str) -> None:
    with pytest.raises(ConfigError, match="address"):
        load(tmp_path, {"address": "/run/ok.sock"}, address=address)


def test_address_is_trimmed(tmp_path: Path) -> None:
    assert load(tmp_path, {"address": "  /run/x.sock \t"}).address == "/run/x.sock"
    assert load(tmp_path, {}, address=" /run/flag.sock ").address == "/run/flag.sock"


def test_flags_override_file_values(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        {"root": "/file/root", "address": "/file.sock", "verbose": "error", "rwMode": "dir"},
        root="/flag/root",
        address="/flag.sock",
        log_level="debug",
    )
    assert config.root == "/flag/root"
    assert config.address == "/flag.sock"
    assert config.log_level == "debug"
    assert config.python_log_level == logging.DEBUG
    assert config.rw_mode == "dir"


def test_absent_flags_keep_file_values(tmp_path: Path) -> None:
    config = load(tmp_path, {"root": "/file/root", "address": "/file.sock", "verbose": "warn"})
    assert (config.root, config.address, config.log_level) == ("/file/root", "/file.sock", "warn")


def test_bad_log_level_flag_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="log-level"):
        load(tmp_path, {}, log_level="loud")


def test_keys_match_case_insensitively_like_go() -> None:
    config = parse_config({"RwMode": "dir", "ROOT": "/r", "exporterconfig": {"Port": 9000}})
    assert (config.rw_mode, config.root, config.exporter.port) == ("dir", "/r", 9000)


def test_resource_caps_and_socket_group() -> None:
    config = parse_config(
        {"maxConcurrentRequests": 8, "maxConcurrentDeviceOps": 2, "socketGroup": "0"}
    )
    assert (config.max_concurrent_requests, config.max_concurrent_device_ops) == (8, 2)
    assert config.socket_group == "0"
    assert config_module.socket_group_id("root") == 0


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"maxConcurrentRequests": 0}, "maxConcurrentRequests"),
        ({"maxConcurrentDeviceOps": -1}, "maxConcurrentDeviceOps"),
        ({"socketGroup": "no-such-group-obdsnap"}, "socketGroup"),
    ],
)
def test_bad_resource_settings_name_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        parse_config(raw)


def test_effective_config_reads_back_as_the_same_config() -> None:
    config = parse_config({"rwMode": "dir", "exporterConfig": {"enable": True, "port": 9000}})
    assert parse_config(config.as_json()) == config
    assert config.as_json()["exporterConfig"]["uriPrefix"] == "/metrics"


def test_check_config_prints_the_effective_config_or_one_error_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    good = tmp_path / "good.json"
    good.write_text(json.dumps({"rwMode": "dev"}))
    done = subprocess.run(
        [sys.executable, "-m", "obdsnap", "check-config", "--config", str(good)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rwMode"] == "dev"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rwMode": 3}))
    done = subprocess.run(
        [sys.executable, "-m", "obdsnap", "check-config", "--config", str(bad)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        'obdsnap: config: "rwMode": expected a string, got 3'
    ]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_log_format_from_the_file_and_the_flag(tmp_path: Path, log_format: str) -> None:
    assert parse_config({}).log_format == "text"
    assert parse_config({"logFormat": log_format}).log_format == log_format
    assert parse_config({"logFormat": log_format}).as_json()["logFormat"] == log_format
    other = "json" if log_format == "text" else "text"
    path = write_config(tmp_path, {"logFormat": other})
    assert load_config(path, log_format=log_format).log_format == log_format
    with pytest.raises(ConfigError, match="--log-format"):
        load_config(path, log_format="xml")


def test_check_config_shows_the_log_format(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = write_config(tmp_path, {"logFormat": "json"})
    done = subprocess.run(
        [sys.executable, "-m", "obdsnap", "check-config", "--config", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["logFormat"] == "json"
    path = write_config(tmp_path, {"logFormat": "yaml"})
    done = subprocess.run(
        [sys.executable, "-m", "obdsnap", "check-config", "--config", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "obdsnap: config: \"logFormat\": must be one of text, json (got 'yaml')"
    ]


def test_device_backend_defaults_to_tcmu_and_a_bad_one_is_one_line() -> None:
    assert parse_config({}).device_backend == "tcmu"
    assert parse_config({"deviceBackend": "tcmu"}).as_json()["deviceBackend"] == "tcmu"
    with pytest.raises(ConfigError) as raised:
        parse_config({"deviceBackend": "nbd"})
    assert str(raised.value) == "config: \"deviceBackend\": must be one of tcmu (got 'nbd')"


def test_every_device_backend_the_config_accepts_can_be_built() -> None:
    from obdsnap.config import DEVICE_BACKENDS
    from obdsnap.server import DEVICE_BACKENDS as BUILDERS

    assert set(BUILDERS) == set(DEVICE_BACKENDS)
