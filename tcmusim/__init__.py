"""tcmusim: the Linux kernel's TCMU/tcm_loop/SCSI side and overlaybd-tcmu, simulated.

obdsnap attaches overlaybd images through configfs (``target_core_user`` and
``tcm_loop``) and finds the resulting disk in sysfs. Where the kernel has no
configfs/TCMU, this simulator plays both the kernel and the overlaybd-tcmu
daemon, so obdsnap's production code runs unchanged against two directories:

- a **configfs** root: a FUSE mount (mfusepy, libfuse3, multithreaded) with
  configfs semantics (:mod:`tcmusim.configfs`) over a tree of groups
  (:mod:`tcmusim.configtree`) holding the kernel's objects (:mod:`tcmusim.target`):
  TCMU devices (:mod:`tcmusim.tcmu`) and tcm_loop targets (:mod:`tcmusim.tcmloop`);
- a **sysfs** root: a plain directory where exported disks appear as
  ``class/scsi_device/H:C:T:L/device/block/<name>`` (:mod:`tcmusim.sysfs`).

Writing ``1`` to a device's ``enable`` opens the image described by its
``config.v1.json`` (:mod:`tcmusim.imageconfig`) like overlaybd-tcmu would
(:mod:`tcmusim.overlaybd`) and binds a real loop device to it
(:mod:`tcmusim.backing`, :mod:`tcmusim.loopdev`): ``<name>`` is ``loopN`` and
``/dev/loopN`` is the disk, so mkfs, mount, reads and writes are real.

Layer format (:mod:`tcmusim.layerfmt`): every file carries the real overlaybd
magic (LSMT, or ZFile for ``-z`` commits) in a 4 KiB header followed by a JSON
description. Writable data is the raw sparse disk image after the header (a
loop device serves it in place); a committed layer (``overlaybd.commit``, a
registry blob) is compact: the image's data extents plus an extent table.
Layers stack for real because each layer holds the whole merged image up to
itself, chained by uuid/parent uuid: a read-only device serves the top lower's
image (expanded into a shared sparse cache file), a writable device's data file
is filled from the top lower's image on its first open, and ``overlaybd-commit``
packs the data file into a new layer whose parent is that lower.

Tools (:mod:`tcmusim.tools`): ``overlaybd-create`` and ``overlaybd-commit``
stand-ins, installed as wrappers by ``python -m tcmusim install-tools DIR``.
Images (:mod:`tcmusim.mkimage`): layer blobs for the blob store and OCI archives
for ``ctr image import``, built from directories or layer tarballs: each layer
applied onto the merged tree (``mkimage.tree``), turned into a layer file
(``mkimage.layers``), and the archive written (``mkimage.oci``).

Faults and latencies come from a JSON control file read on every operation
(:mod:`tcmusim.knobs`); slow I/O routes a device's backing file through a FUSE
passthrough that sleeps per read/write (:mod:`tcmusim.slowio`).
:mod:`tcmusim.testing` runs the simulator for tests.
"""
