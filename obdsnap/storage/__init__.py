"""Snapshot metadata: the records and their durable store (containerd's snapshots/storage)."""

from obdsnap.storage.metastore import MetaStore
from obdsnap.storage.model import Info, Intent, Kind, Operation, Record, Usage
from obdsnap.storage.sqlite import StoreError

__all__ = ["Info", "Intent", "Kind", "MetaStore", "Operation", "Record", "StoreError", "Usage"]
