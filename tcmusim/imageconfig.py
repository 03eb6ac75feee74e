"""The fields overlaybd-tcmu reads from a device's config.v1.json, checked as it reads them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LowerConfig:
    file: str = ""
    digest: str = ""
    size: int = 0
    dir: str = ""
    target_digest: str = ""  # TurboOCI: the original OCI layer blob
    gzip_index: str = ""  # TurboOCI: the gzip original's index


@dataclass(frozen=True)
class ImageConfig:
    result_file: str
    repo_blob_url: str = ""
    lowers: tuple[LowerConfig, ...] = ()
    upper_index: str = ""
    upper_data: str = ""
    acceleration_layer: bool = False
    record_trace_path: str = ""


def _string(document: dict[str, object], key: str, where: str) -> str:
    value = document.get(key, "")
    if not isinstance(value, str):
        raise ValueError(f"{where}{key} must be a string")
    return value


def parse_image_config(document: object) -> ImageConfig:
    """The fields overlaybd reads from config.v1.json (others are ignored, as it does)."""
    if not isinstance(document, dict):
        raise ValueError("the image config must be a JSON object")
    lowers: list[LowerConfig] = []
    raw_lowers = document.get("lowers", [])
    if not isinstance(raw_lowers, list):
        raise ValueError("lowers must be a list")
    for i, raw in enumerate(raw_lowers):
        if not isinstance(raw, dict):
            raise ValueError(f"lowers[{i}] must be an object")
        size = raw.get("size", 0)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"lowers[{i}].size must be a non-negative integer")
        where = f"lowers[{i}]."
        lowers.append(
            LowerConfig(
                file=_string(raw, "file", where),
                digest=_string(raw, "digest", where),
                size=size,
                dir=_string(raw, "dir", where),
                target_digest=_string(raw, "targetDigest", where),
                gzip_index=_string(raw, "gzipIndex", where),
            )
        )
    upper = document.get("upper", {})
    if not isinstance(upper, dict):
        raise ValueError("upper must be an object")
    acceleration = document.get("accelerationLayer", False)
    if not isinstance(acceleration, bool):
        raise ValueError("accelerationLayer must be true or false")
    return ImageConfig(
        result_file=_string(document, "resultFile", ""),
        repo_blob_url=_string(document, "repoBlobUrl", ""),
        lowers=tuple(lowers),
        upper_index=_string(upper, "index", "upper."),
        upper_data=_string(upper, "data", "upper."),
        acceleration_layer=acceleration,
        record_trace_path=_string(document, "recordTracePath", ""),
    )
