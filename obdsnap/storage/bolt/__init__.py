"""bbolt (go.etcd.io/bbolt) database files, read and written in pure Python.

The Go overlaybd snapshotter keeps its metadata in a bbolt file; obdsnap reads
one to take a root over and writes one to hand it back. A database is handled
as a whole, as a tree of :class:`Bucket` values.

The file is a sequence of pages of ``page_size`` bytes. Pages 0 and 1 hold the
two meta pages (the valid one with the highest transaction id is current); the
meta names the freelist page and the root bucket's page. A bucket is a B+tree
of branch and leaf pages; a page that needs more room spans ``overflow``
following pages. A leaf element flagged as a bucket holds the sub-bucket's
header (root page id, sequence); a small bucket without sub-buckets has root 0
and its single leaf page stored inline after that header.

``page`` holds the layout of the file (bbolt's page.go and db.go), ``reader`` reads a
file into a tree of buckets and ``writer`` lays a tree out as bbolt's compaction would.
"""

from obdsnap.storage.bolt.page import BoltError, Bucket, looks_like_bolt
from obdsnap.storage.bolt.reader import read_bolt
from obdsnap.storage.bolt.writer import write_bolt

__all__ = ["BoltError", "Bucket", "looks_like_bolt", "read_bolt", "write_bolt"]
