"""Snapshot metadata: the records and their durable store (containerd's snapshots/storage)."""

from obdsnap.storage.metastore import MetaStore, StoreError
from obdsnap.storage.model import Info, Intent, Kind, Operation, Record, Usage

__all__ = ["Info", "Intent", "Kind", "MetaStore", "Operation", "Record", "StoreError", "Usage"]
