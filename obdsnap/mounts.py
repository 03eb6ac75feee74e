"""Mount descriptions handed back to containerd, and how they are built for overlayfs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Mount:
    """One entry of a Prepare/View/Mounts answer (containerd.types.Mount)."""

    type: str
    source: str
    options: tuple[str, ...] = ()
    target: str = ""


def bind_mount(source: Path, *, readonly: bool) -> Mount:
    return Mount("bind", str(source), ("ro" if readonly else "rw", "rbind"))


def overlay_mount(
    lowers: Sequence[Path],
    *,
    upper: Path | None = None,
    work: Path | None = None,
    index_off: bool = False,
) -> Mount:
    """An overlay mount; ``lowers`` nearest first, ``upper``/``work`` for a writable one."""
    options: list[str] = []
    if index_off:
        options.append("index=off")
    if upper is not None and work is not None:
        options += [f"workdir={work}", f"upperdir={upper}"]
    options.append("lowerdir=" + ":".join(str(lower) for lower in lowers))
    return Mount("overlay", "overlay", tuple(options))


def overlay_has_index_param(sysfs: Path = Path("/sys")) -> bool:
    """Whether this kernel's overlayfs knows ``index``; then obdsnap mounts with index=off.

    With index on, an upper layer mounted over lowers it has seen with other
    upper layers fails with ESTALE; containerd's overlayfs makes the same choice.
    """
    return (sysfs / "module/overlay/parameters/index").exists()
