"""DESIGN-v1 §1 and §22: the Go v1.x boot config and process, through obdsnap's command line
and a running obdsnap on the simulator."""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from grpclib.const import Status
from support.block import Obd
from support.block_fixtures import Images, StartObd
from support.processes import run
from support.scrape import scrape
from support.server_process import ServerProcess, refusal, short_tmpdir
from support.simulator import MISSING, RunningSimulator, force_clean, settings_on
from support.snapshots import expect_status

from obdsnap.config import ConfigError, parse_config
from obdsnap.labels import LOCAL_COMMIT_PATH, TARGET_SNAPSHOT_REF, WRITABLE

DATA = Path(__file__).parent / "data"
PACKAGED = sorted(path.name for path in DATA.glob("*.json"))
OBDSNAP = f"{shlex.quote(sys.executable)} -m obdsnap"

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]


def check_config(tmp_path: Path, raw: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    return run(sys.executable, "-m", "obdsnap", "check-config", path, check=False)


def effective(tmp_path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    done = check_config(tmp_path, raw)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert isinstance(document, dict)
    return document


@contextlib.asynccontextmanager
async def serving(
    simulator: RunningSimulator, command: str, *, root_link: bool = False, **settings: object
) -> AsyncIterator[Obd]:
    """obdsnap started by ``command`` (``{config}`` is its config file); with ``root_link``,
    its root is a symlink to ``<workdir>/real``."""
    workdir = short_tmpdir()
    try:
        if root_link:
            (workdir / "real").mkdir()
            (workdir / "root").symlink_to(workdir / "real")
        config = {
            "root": str(workdir / "root"),
            "address": str(workdir / "obdsnap.sock"),
            **settings_on(simulator, **settings),
        }
        obd = Obd(simulator, ServerProcess(workdir, command, config=json.dumps(config)), config)
        await obd.start()
        try:
            yield obd
        finally:
            await obd.remove_all()
            assert await obd.stop() == 0, obd.server.log()
    finally:
        force_clean(simulator, [workdir])
        shutil.rmtree(workdir, ignore_errors=True)


def refused(tmp_path: Path, *args: str) -> str:
    """The one line with which ``obdsnap ARGS`` refuses to start (exit status 1)."""
    done = run(sys.executable, "-m", "obdsnap", *args, check=False, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    return refusal(done.stdout + done.stderr)


# ---------------------------------------------------------------------- the packaged configs


@pytest.mark.parametrize("name", PACKAGED)
async def test_s1_packaged_go_config_starts_and_serves(start_obd: StartObd, name: str) -> None:
    """DESIGN-v1 §1 packaging, §23 item 4: each packaged Go config starts obdsnap unchanged."""
    settings = json.loads((DATA / name).read_text())
    del settings["root"], settings["address"]  # the test's own paths, nothing else changed
    obd = await start_obd(**settings)
    await obd.prepare("extract-1 sha256:one", "", {TARGET_SNAPSHOT_REF: "sha256:one"})
    assert (await obd.stat("extract-1 sha256:one")).name == "extract-1 sha256:one"
    if settings.get("exporterConfig", {}).get("enable"):
        exposition = await scrape(settings["exporterConfig"]["port"])
        assert exposition.value("is_alive") == 1


@pytest.mark.parametrize("name", PACKAGED)
def test_s1_check_config_accepts_packaged_go_config(name: str) -> None:
    """DESIGN-v1 §1 packaging: `obdsnap check-config` accepts each packaged Go config as is."""
    done = run(sys.executable, "-m", "obdsnap", "check-config", DATA / name)
    shown = json.loads(done.stdout)
    for key, value in json.loads((DATA / name).read_text()).items():
        if key == "exporterConfig":
            assert {k: shown[key][k] for k in value} == value
        else:
            assert shown[key] == value, key
    assert "ignoring unknown key" not in done.stderr


# ---------------------------------------------------------------------- keys and parsing


def test_s1_v1_keys_have_go_types_and_defaults(tmp_path: Path) -> None:
    """DESIGN-v1 §1 key table: every v1.4.4 key and obdsnap's own two, with their defaults."""
    shown = effective(tmp_path, {})
    assert {key: shown[key] for key in V1_DEFAULTS} == V1_DEFAULTS


V1_DEFAULTS: dict[str, Any] = {
    "verbose": "info",
    "logReportCaller": False,
    "rwMode": "overlayfs",
    "autoRemoveDev": False,
    "exporterConfig": {"enable": False, "uriPrefix": "/metrics", "port": 9863, "host": "127.0.0.1"},
    "writableLayerType": "append",
    "asyncRemove": False,
    "mirrorRegistry": [],
    "defaultFsType": "ext4",
    "rootfsQuota": "",
    "tenant": -1,
    "turboFsType": ["erofs", "ext4"],
    "runtimeType": "containerd",
    "writableCommit": "compress",
    "quotaProjectId": 16777216,
}


def test_s1_v1_keys_are_read(tmp_path: Path) -> None:
    """DESIGN-v1 §1 key table: each v1.x key is read with its JSON type."""
    raw = {
        "asyncRemove": True,
        "mirrorRegistry": [{"host": "localhost:5000", "insecure": True}],
        "defaultFsType": "xfs",
        "rootfsQuota": "10g",
        "tenant": 3,
        "turboFsType": ["ext4", "erofs"],
        "runtimeType": "docker",
        "writableCommit": "seal",
        "quotaProjectId": 4242,
    }
    shown = effective(tmp_path, raw)
    assert {key: shown[key] for key in raw} == raw


def test_s1_key_names_match_in_any_case(tmp_path: Path) -> None:
    """DESIGN-v1 §1 parsing: key names match case-insensitively, as Go's encoding/json."""
    shown = effective(
        tmp_path,
        {
            "AsyncRemove": True,
            "asyncremove_is_not_a_key": 1,
            "RUNTIMETYPE": "docker",
            "MirrorRegistry": [{"Host": "localhost:5000", "INSECURE": True}],
            "turbofstype": ["ext4"],
        },
    )
    assert shown["asyncRemove"] is True
    assert shown["runtimeType"] == "docker"
    assert shown["mirrorRegistry"] == [{"host": "localhost:5000", "insecure": True}]
    assert shown["turboFsType"] == ["ext4", "erofs"]


def test_s1_null_keeps_scalar_default_and_empties_a_list(tmp_path: Path) -> None:
    """DESIGN-v1 §1 parsing: null keeps a scalar/object default but empties a list."""
    shown = effective(
        tmp_path,
        {
            "tenant": None,
            "asyncRemove": None,
            "exporterConfig": None,
            "mirrorRegistry": None,
            "turboFsType": None,
        },
    )
    assert shown["tenant"] == -1
    assert shown["asyncRemove"] is False
    assert shown["exporterConfig"] == V1_DEFAULTS["exporterConfig"]
    assert shown["mirrorRegistry"] == []
    assert shown["turboFsType"] == ["ext4", "erofs"]


def test_s1_unknown_keys_are_ignored(tmp_path: Path) -> None:
    """DESIGN-v1 §1 parsing: unknown keys are ignored (obdsnap names them in a warning)."""
    done = check_config(tmp_path, {"someLaterKey": {"x": 1}, "rwMode": "dir"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rwMode"] == "dir"
    assert "someLaterKey" in done.stderr


@pytest.mark.parametrize(
    ("raw", "line"),
    [
        ({"tenant": "1"}, 'obdsnap: config: "tenant": expected an integer, got "1"'),
        ({"asyncRemove": "yes"}, 'obdsnap: config: "asyncRemove": expected a boolean, got "yes"'),
        ({"mirrorRegistry": {}}, 'obdsnap: config: "mirrorRegistry": expected an array, got {}'),
        ({"turboFsType": [4]}, 'obdsnap: config: "turboFsType[0]": expected a string, got 4'),
    ],
)
def test_s1_type_mismatch_is_refused_naming_the_key(
    tmp_path: Path, raw: dict[str, Any], line: str
) -> None:
    """DESIGN-v1 §1 parsing: a type mismatch exits 1 (obdsnap: one line naming the key, §22)."""
    done = check_config(tmp_path, raw)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [line]
    path = tmp_path / "config.json"
    assert refused(tmp_path, "serve", str(path)) == line


@pytest.mark.parametrize(
    ("given", "result"),
    [
        (None, ["erofs", "ext4"]),
        ([], ["ext4", "erofs"]),
        (["ext4"], ["ext4", "erofs"]),
        (["erofs"], ["erofs", "ext4"]),
        (["ext4", "erofs"], ["ext4", "erofs"]),
    ],
)
def test_s1_turbo_fs_type_normalised(
    tmp_path: Path, given: list[str] | None, result: list[str]
) -> None:
    """DESIGN-v1 §1: turboFsType gets ext4, then erofs, appended when missing; absent = default."""
    raw = {} if given is None else {"turboFsType": given}
    assert effective(tmp_path, raw)["turboFsType"] == result


LOGRUS_LEVELS = ["trace", "debug", "info", "warn", "warning", "error", "fatal", "panic"]


@pytest.mark.parametrize("level", [*LOGRUS_LEVELS, "WARN", "Info", "PANIC"])
def test_s22_logrus_level_names_in_any_case(tmp_path: Path, level: str) -> None:
    """DESIGN-v1 §22 bad verbose: every logrus level name is accepted, in any case."""
    assert effective(tmp_path, {"verbose": level})["verbose"] == level


@pytest.mark.parametrize(
    ("raw", "key"), [({"verbose": "loud"}, '"verbose"'), ({"rwMode": "block"}, '"rwMode"')]
)
def test_s22_bad_verbose_or_rw_mode_refused_in_one_line(
    tmp_path: Path, raw: dict[str, Any], key: str
) -> None:
    """DESIGN-v1 §22 quirk 1: a bad verbose/rwMode is refused in one line naming the key."""
    done = check_config(tmp_path, raw)
    assert done.returncode == 1
    assert key in done.stderr.strip()
    assert refused(tmp_path, "serve", str(tmp_path / "config.json")).startswith(
        f"obdsnap: config: {key}"
    )


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"rootfsQuota": "lots"}, '"rootfsQuota"'),
        ({"runtimeType": "podman"}, '"runtimeType"'),
        ({"writableLayerType": "dense"}, '"writableLayerType"'),
        ({"writableCommit": "zip"}, '"writableCommit"'),
        ({"tenant": -2}, '"tenant"'),
        ({"turboFsType": ["btrfs"]}, '"turboFsType[0]"'),
        ({"mirrorRegistry": [{"insecure": True}]}, '"mirrorRegistry[0].host"'),
    ],
)
def test_s22_bad_v1_value_refused_at_start(tmp_path: Path, raw: dict[str, Any], key: str) -> None:
    """DESIGN-v1 §1 "values are not validated" and §22: obdsnap refuses them at start instead,
    in one line naming the key (Go fails later, e.g. every rootfs Prepare for a bad quota)."""
    done = check_config(tmp_path, raw)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"obdsnap: config: {key}: "), line


async def test_s22_logrus_level_name_serves(start_obd: StartObd) -> None:
    """DESIGN-v1 §22 bad verbose: obdsnap serves with a logrus level name in capitals."""
    obd = await start_obd(verbose="WARNING")
    await expect_status(obd.stat("nothing"), Status.NOT_FOUND)
    assert "obdsnap serving on" not in obd.server.log()  # an info line, below WARNING


# ---------------------------------------------------------------------- the process


@pytest.mark.parametrize(
    "command", [f"{OBDSNAP} serve {{config}}", f"{OBDSNAP} {{config}}"], ids=["serve", "bare"]
)
async def test_s1_config_path_as_the_one_argument(
    simulator: RunningSimulator, images: Images, command: str
) -> None:
    """DESIGN-v1 §1 process: the config path as the one argument, as Go's unit lines give it."""
    async with serving(simulator, command, rwMode="dir") as obd:
        await expect_status(obd.stat("nothing"), Status.NOT_FOUND)
        assert '"rwMode":"dir"' in obd.server.log()


def test_s22_config_path_given_twice_differently_is_refused(tmp_path: Path) -> None:
    """DESIGN-v1 §22 config path: --config and a positional path must name the same file."""
    one, other = tmp_path / "one.json", tmp_path / "other.json"
    for path in (one, other):
        path.write_text("{}")
    line = refused(tmp_path, "serve", "--config", str(one), str(other))
    assert line == f"obdsnap: the config path is given twice: --config {one} and {other}"
    same = run(sys.executable, "-m", "obdsnap", "check-config", "--config", one, one)
    assert json.loads(same.stdout)["rwMode"] == "overlayfs"


async def test_s1_start_up_line_names_the_settings(start_obd: StartObd) -> None:
    """DESIGN-v1 §1 process: the start-up line names rwMode, autoRemove, the layer type,
    asyncRemove (obdsnap adds writableCommit and runtimeType)."""
    obd = await start_obd(
        autoRemoveDev=True,
        writableLayerType="sparse",
        asyncRemove=True,
        writableCommit="seal",
    )
    assert (
        "settings: rwMode overlayfs, autoRemoveDev true, writableLayerType sparse, "
        "asyncRemove true, writableCommit seal, runtimeType containerd"
    ) in obd.server.log()


async def test_s1_mirror_registry_logged_when_set(start_obd: StartObd) -> None:
    """DESIGN-v1 §1 process: a mirrorRegistry is logged as `mirror Registry: …`."""
    mirrors = [
        {"host": "localhost:5000", "insecure": True},
        {"host": "registry-1.docker.io", "insecure": False},
    ]
    with_mirrors = await start_obd(mirrorRegistry=mirrors)
    assert (
        "mirror Registry: localhost:5000 (insecure: http), registry-1.docker.io"
        in with_mirrors.server.log()
    )
    without = await start_obd(mirrorRegistry=[])
    assert "mirror Registry" not in without.server.log()


@pytest.mark.parametrize(("tenant", "warned"), [(107, True), (100, True), (99, False), (-1, False)])
async def test_s22_tenant_of_100_or_more_warns(
    start_obd: StartObd, tenant: int, warned: bool
) -> None:
    """DESIGN-v1 §22 quirk 14: tenants differing by 100 collide; obdsnap warns for tenant ≥ 100."""
    obd = await start_obd(tenant=tenant)
    line = f"tenant {tenant}: its devices' WWNs start naa.{tenant % 100 + 100}"
    assert (line in obd.server.log()) is warned


async def test_s1_root_resolved_through_symlinks(
    simulator: RunningSimulator, images: Images
) -> None:
    """DESIGN-v1 §1 process: every path obdsnap emits (mounts, config.v1.json, labels) names
    the root resolved through its symlinks."""
    async with serving(simulator, f"{OBDSNAP} serve --config {{config}}", root_link=True) as obd:
        real, link = obd.root.resolve(), obd.root
        chain = await obd.unpack_remote(images.three)
        top = obd.latest_id()
        config = obd.config(top)
        assert config["resultFile"].startswith(f"{real}/snapshots/")
        assert all(lower["dir"].startswith(f"{real}/snapshots/") for lower in config["lowers"])
        rootfs = await obd.prepare("rootfs", chain[-1])
        writable = await obd.prepare("writable", chain[-1], {WRITABLE: "dir"})
        await obd.commit("layer", "writable")
        emitted = [rootfs[0].source, *rootfs[0].options, writable[0].source]
        emitted.append((await obd.stat("layer")).labels[LOCAL_COMMIT_PATH])
        assert f"{real}/snapshots/{top}/block/mountpoint" in ",".join(rootfs[0].options)
        assert not [path for path in emitted if str(link) in path]
        assert f"(root {real})" in obd.server.log()


def test_s1_unresolvable_root_is_a_start_up_error(tmp_path: Path) -> None:
    """DESIGN-v1 §1 process: a root that does not resolve stops start-up with one clear line."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"root": str(loop), "address": str(tmp_path / "s.sock")}))
    line = refused(tmp_path, "serve", str(path))
    assert line.startswith(f"obdsnap: invalid root {loop}: ")


def test_s12_erofs_kernel_check_keys_default_to_the_kernels_own() -> None:
    """DESIGN-v1 §12 rule 4, §24: the kernel check reads /proc/filesystems and runs modprobe."""
    default = parse_config({})
    assert (default.proc_filesystems, default.modprobe_command) == (
        "/proc/filesystems",
        "modprobe",
    )
    raw = {"procFilesystems": "/run/filesystems", "modprobeCommand": "/opt/bin/modprobe"}
    assert {key: parse_config(raw).as_json()[key] for key in raw} == raw


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"procFilesystems": "filesystems"}, '"procFilesystems": must be an absolute path'),
        ({"modprobeCommand": " "}, '"modprobeCommand": must not be empty'),
        ({"modprobeCommand": 1}, '"modprobeCommand"'),
    ],
)
def test_s12_erofs_kernel_check_keys_are_checked(raw: dict[str, Any], problem: str) -> None:
    """DESIGN-v1 §12 rule 4: a check that could never run is a start-up error naming the key."""
    with pytest.raises(ConfigError, match=problem):
        parse_config(raw)
