"""DESIGN-v1 §21: ``obdsnap attach`` / ``obdsnap detach``, overlaybd devices without containerd.

The commands run as an operator runs them, on the simulator's configfs and sysfs
(named by a boot config), with an overlaybd config of an image obdsnap pulled.
"""

from __future__ import annotations

import asyncio
import errno
import json
import time
from pathlib import Path

import pytest
from support.attacher import obdsnap_device_command as obdsnap
from support.block import Obd
from support.block_fixtures import Images
from support.simulator import MISSING
from support.snapshots import wait_until

from obdsnap.attacher import AttacherError, device_request
from obdsnap.genproto.containerd.types import Mount
from tcmusim.testing import only

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

DEVICE_ID = 4242
HBA_DIR = "target/core/user_999999999"
WWN = "naa.1990000000004242"


async def image_config(obd: Obd, images: Images) -> Path:
    """An overlaybd config of the single-layer image, in a directory of its own."""
    _, top = await obd.unpack_top(images.single)
    directory = obd.server.workdir / "standalone"
    directory.mkdir()
    document = obd.config(top)
    document["resultFile"] = str(directory / "result.log")
    config = directory / "config.v1.json"
    config.write_text(json.dumps(document))
    return config


def target_dir(obd: Obd, device_id: int = DEVICE_ID) -> Path:
    return obd.sim.configfs / HBA_DIR / f"dev_{device_id}"


def assert_no_device(obd: Obd) -> None:
    assert not target_dir(obd).exists()
    assert not (obd.sim.configfs / "target/loopback" / WWN).exists()


async def test_s21_attach_prints_a_device_that_serves_the_image_and_detach_removes_it(
    obd: Obd, images: Images
) -> None:
    """DESIGN-v1 §21: attach prints the device path (tenant -1 names); detach removes entries."""
    config = await image_config(obd, images)
    attached = await obdsnap(obd, "attach", "--id", str(DEVICE_ID), "--config", str(config))
    assert attached.returncode == 0, attached.stderr
    device = attached.stdout.strip()
    assert device.startswith("/dev/") and device in obd.sim.loop_devices()
    assert f"Config: overlaybd/{config} " in (target_dir(obd) / "info").read_text()
    link = obd.sim.configfs / "target/loopback" / WWN / "tpgt_1/lun/lun_0" / f"dev_{DEVICE_ID}"
    assert link.is_symlink()
    assert (config.parent / "result.log").read_text() == "success"
    # No mkfs: the device holds the image's own filesystem.
    target = obd.server.workdir / "standalone-mounted"
    obd.mount_for_real(Mount(type="ext4", source=device, options=["ro"]), target)
    assert (target / "single.txt").read_text() == "single\n"
    obd.umount_for_real(target)

    detached = await obdsnap(obd, "detach", "--id", str(DEVICE_ID))
    assert detached.returncode == 0, detached.stderr
    assert_no_device(obd)
    assert device not in obd.sim.loop_devices()


async def test_s21_with_devid_appends_the_id_to_dev_config(obd: Obd, images: Images) -> None:
    """DESIGN-v1 §21: ``--with-devid`` writes ``dev_config=overlaybd/<abs config>;<id>``."""
    config = await image_config(obd, images)
    relative = Path("standalone") / config.name
    attached = await obdsnap(
        obd, "attach", "--id", str(DEVICE_ID), "--config", str(relative), "--with-devid",
        cwd=obd.server.workdir,
    )  # fmt: skip
    assert attached.returncode == 0, attached.stderr
    assert f"Config: overlaybd/{config};{DEVICE_ID} " in (target_dir(obd) / "info").read_text()
    assert (await obdsnap(obd, "detach", "--id", str(DEVICE_ID))).returncode == 0
    assert_no_device(obd)


async def test_s21_attach_tries_5_times_then_fails_with_overlaybds_reason(
    obd: Obd, images: Images
) -> None:
    """DESIGN-v1 §21: attach is tried up to 5 times 1 s apart; each failure is undone."""
    config = await image_config(obd, images)
    obd.sim.control.set(fail_open=only("blob gone from the registry", DEVICE_ID))
    log_start = len(obd.sim.log())
    started = time.monotonic()
    attached = await obdsnap(obd, "attach", "--id", str(DEVICE_ID), "--config", str(config))
    assert attached.returncode == 1 and attached.stdout == ""
    assert time.monotonic() - started >= 4 * 1.0
    assert "failed to attach device after 5 attempts" in attached.stderr
    assert "failed:blob gone from the registry" in attached.stderr
    assert obd.sim.log()[log_start:].count(f"dev_{DEVICE_ID}: open failed") == 5
    assert_no_device(obd)


async def test_s21_attach_succeeds_on_a_later_try(obd: Obd, images: Images) -> None:
    """DESIGN-v1 §21: a failure that passes (here an enable refused once) is retried."""
    config = await image_config(obd, images)
    obd.sim.control.set(enable_errno=only(errno.ENOMEM, DEVICE_ID))
    log_start = len(obd.sim.log())
    attaching = asyncio.ensure_future(
        obdsnap(obd, "attach", "--id", str(DEVICE_ID), "--config", str(config))
    )
    refused = lambda: "enable fails with errno" in obd.sim.log()[log_start:]  # noqa: E731
    assert await wait_until(refused, 10.0)
    obd.sim.control.clear()
    attached = await attaching
    assert attached.returncode == 0, attached.stderr
    assert "retry 2/5 after: failed to write enable for" in attached.stderr
    assert (await obdsnap(obd, "detach", "--id", str(DEVICE_ID))).returncode == 0


async def test_s21_attach_refuses_an_id_that_is_already_set_up(obd: Obd, images: Images) -> None:
    """DESIGN-v1 §21 (obdsnap): an ID whose device exists is refused, the device left alone."""
    top_chain, top = await obd.unpack_top(images.single)
    await obd.prepare("c1", top_chain)
    device = obd.assert_attached(top, mounted="ro")
    config = obd.config_path(top)
    attached = await obdsnap(obd, "attach", "--id", str(top), "--config", str(config))
    assert attached.returncode == 1
    assert f"device user_999999999/dev_{top} is already set up" in attached.stderr
    assert obd.assert_attached(top, mounted="ro") == device


async def test_s21_detach_refuses_a_snapshotters_device_unless_forced(
    obd: Obd, images: Images
) -> None:
    """DESIGN-v1 §21 (obdsnap): detach leaves a snapshot's own device unless ``--force``."""
    top_chain, top = await obd.unpack_top(images.single)
    await obd.prepare("c1", top_chain)
    detached = await obdsnap(obd, "detach", "--id", str(top))
    assert detached.returncode == 1
    assert "is the device of a snapshotter's snapshot" in detached.stderr
    obd.assert_attached(top, mounted="ro")


async def test_s21_a_config_that_is_not_json_exits_1(obd: Obd, tmp_path: Path) -> None:
    """DESIGN-v1 §21: the config is validated first: a clear error, exit 1, nothing set up."""
    config = tmp_path / "config.v1.json"
    config.write_text("{not json")
    attached = await obdsnap(obd, "attach", "--id", str(DEVICE_ID), "--config", str(config))
    assert attached.returncode == 1
    assert attached.stderr.startswith(f"obdsnap attach: invalid JSON config file {config}: ")
    missing = await obdsnap(obd, "attach", "--id", "1", "--config", str(tmp_path / "none"))
    assert missing.returncode == 1 and "config file does not exist" in missing.stderr
    assert_no_device(obd)


@pytest.mark.parametrize(
    ("result_file", "expected"),
    [("", "init-debug.log"), ("debug.log", "debug.log"), ("/var/log/obd.log", "/var/log/obd.log")],
)
def test_s21_result_file_is_relative_to_the_config(
    tmp_path: Path, result_file: str, expected: str
) -> None:
    """DESIGN-v1 §21: resultFile relative to the config's dir; empty → init-debug.log there."""
    config = tmp_path / "config.v1.json"
    config.write_text(json.dumps({"lowers": [], "resultFile": result_file}))
    request = device_request(7, config, with_devid=False)
    assert request.result_file == tmp_path / expected
    assert request.dev_config == f"overlaybd/{config}"


def test_s21_result_file_must_be_a_string(tmp_path: Path) -> None:
    """DESIGN-v1 §21: a config whose fields have the wrong type is refused."""
    config = tmp_path / "config.v1.json"
    config.write_text(json.dumps({"resultFile": 5}))
    with pytest.raises(AttacherError, match="resultFile must be a string"):
        device_request(7, config, with_devid=False)
