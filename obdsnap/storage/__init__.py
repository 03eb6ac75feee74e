"""Snapshot metadata: the records and their durable store (containerd's snapshots/storage)."""

from obdsnap.storage.metastore import MetaStore
from obdsnap.storage.model import Info, Kind, Record, Usage

__all__ = ["Info", "Kind", "MetaStore", "Record", "Usage"]
