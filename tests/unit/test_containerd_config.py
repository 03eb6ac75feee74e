"""Tests of obdsnap.containerd_config: the printed TOML read back with tomllib, value by value."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from support.processes import run

from obdsnap.config import BootConfig
from obdsnap.containerd_config import (
    ContainerdConfigError,
    ProxySnapshotter,
    check_snapshotter_name,
    containerd_config,
    toml_string,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CRI_V2 = ("plugins", "io.containerd.grpc.v1.cri", "containerd")
CRI_V3 = ("plugins", "io.containerd.cri.v1.images")


def parsed(snapshotter: ProxySnapshotter, version: int) -> dict[str, Any]:
    return tomllib.loads(containerd_config(snapshotter, version))


def table(document: dict[str, Any], path: tuple[str, ...]) -> Any:
    for part in path:
        document = document[part]
    return document


@pytest.mark.parametrize(("version", "cri"), [(2, CRI_V2), (3, CRI_V3)])
def test_every_value_reads_back(version: int, cri: tuple[str, ...]) -> None:
    snapshotter = ProxySnapshotter("overlaybd", "/run/obd/obd.sock", "/data/obd root")
    document = parsed(snapshotter, version)
    assert document == {
        "proxy_plugins": {
            "overlaybd": {
                "type": "snapshot",
                "address": "/run/obd/obd.sock",
                "exports": {"root": "/data/obd root"},
            }
        },
        "plugins": document["plugins"],
    }
    assert table(document, cri) == {
        "snapshotter": "overlaybd",
        "disable_snapshot_annotations": False,
    }
    other = CRI_V3 if version == 2 else CRI_V2
    with pytest.raises(KeyError):
        table(document, other)


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize(
    "text",
    [
        'quote " and backslash \\ ',
        "newline \n tab \t return \r",
        "controls \x00 \x01 \x1f \x7f \b \f",
        "unicode é 雪 🚀",
        "'single' ''' \"\"\" ",
        "a = 1\n[table]",
        "\\u0041 \\n",
    ],
)
def test_strings_are_escaped(version: int, text: str) -> None:
    snapshotter = ProxySnapshotter("obd.snap-2_x", f"/run/{text}.sock", f"/var/{text}")
    document = parsed(snapshotter, version)
    plugin = document["proxy_plugins"]["obd.snap-2_x"]
    assert plugin["address"] == f"/run/{text}.sock"
    assert plugin["exports"] == {"root": f"/var/{text}"}
    assert table(document, CRI_V2 if version == 2 else CRI_V3)["snapshotter"] == "obd.snap-2_x"


def test_toml_string_is_one_line_and_reads_back() -> None:
    every = "".join(chr(code) for code in range(0x80))
    quoted = toml_string(every)
    assert "\n" not in quoted
    assert tomllib.loads(f"x = {quoted}") == {"x": every}


def test_a_dotted_name_is_a_quoted_key_not_nested_tables() -> None:
    text = containerd_config(ProxySnapshotter("my.snap", "/s", "/r"))
    assert '[proxy_plugins."my.snap"]' in text
    assert list(tomllib.loads(text)["proxy_plugins"]) == ["my.snap"]


@pytest.mark.parametrize(
    "name",
    [
        "my snap.v2",
        "",
        "a/b",
        "snap]",
        'sn"ap',
        ".hidden",
        "trailing-",
        "double..dot",
        "tab\tname",
        "naïve",
        "x" * 77,
        "overlayfs",
        "native",
    ],
)
def test_names_containerd_cannot_use_are_refused(name: str) -> None:
    with pytest.raises(ContainerdConfigError):
        check_snapshotter_name(name)
    with pytest.raises(ContainerdConfigError):
        containerd_config(ProxySnapshotter(name, "/s", "/r"))


@pytest.mark.parametrize("name", ["overlaybd", "obdsnap", "my.snap-v2", "A1_b", "x" * 76])
def test_names_containerd_can_use_are_accepted(name: str) -> None:
    check_snapshotter_name(name)


def test_an_unknown_config_version_is_refused() -> None:
    with pytest.raises(ContainerdConfigError):
        containerd_config(ProxySnapshotter("overlaybd", "/s", "/r"), 4)


def test_the_deploy_file_is_the_printed_text_for_the_default_config() -> None:
    default = BootConfig()
    printed = containerd_config(ProxySnapshotter("overlaybd", default.address, default.root))
    assert (REPO_ROOT / "deploy" / "containerd-config.toml").read_text() == printed


def obdsnap(*args: str) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "obdsnap", *args, check=False, cwd=REPO_ROOT)


@pytest.mark.parametrize(("version", "cri"), [("2", CRI_V2), ("3", CRI_V3)])
def test_the_command_prints_the_config_at_hand(
    tmp_path: Path, version: str, cri: tuple[str, ...]
) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"root": "/srv/obd", "address": "/run/x.sock"}')
    done = obdsnap(
        "containerd-config", "--config", str(config), "--name", "obd", "--config-version", version
    )
    assert done.returncode == 0, done.stderr
    document = tomllib.loads(done.stdout)
    assert document["proxy_plugins"]["obd"] == {
        "type": "snapshot",
        "address": "/run/x.sock",
        "exports": {"root": "/srv/obd"},
    }
    assert table(document, cri) == {"snapshotter": "obd", "disable_snapshot_annotations": False}


def test_the_command_refuses_a_bad_name_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text("{}")
    done = obdsnap("containerd-config", "--config", str(config), "--name", "my snap.v2")
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("obdsnap: snapshotter name 'my snap.v2'")
