"""The configfs names of a snapshotter's devices, chosen by its ``tenant`` (DESIGN-v1 §11, §15).

Several snapshotters on one host each number their snapshots from 1, so each
puts its TCMU targets under its own HBA (``user_<tenant>``, or
``user_999999999`` without a tenant) and its loopback WWNs under its own
prefix (``naa.1<tenant mod 100, 2 digits>``, or ``naa.199``). Tenants that
differ by a multiple of 100 share a prefix, as in the Go snapshotter.
"""

from __future__ import annotations

from dataclasses import dataclass

from obdsnap.config import NO_TENANT

DEFAULT_HBA_ID = 999999999
DEFAULT_WWN_PREFIX = 199
# WWN prefixes repeat past this: tenants 7 and 107 would name their devices alike.
WWN_PREFIXES = 100


@dataclass(frozen=True)
class TcmuNames:
    tenant: int = NO_TENANT

    @property
    def hba(self) -> str:
        """The HBA directory under ``target/core``."""
        return f"user_{DEFAULT_HBA_ID if self.tenant == NO_TENANT else self.tenant}"

    @property
    def wwn_prefix(self) -> str:
        """``naa.`` and the three digits every WWN of this tenant starts with."""
        if self.tenant == NO_TENANT:
            return f"naa.{DEFAULT_WWN_PREFIX:03d}"
        return f"naa.{self.tenant % WWN_PREFIXES + WWN_PREFIXES:03d}"

    def wwn(self, snapshot_id: int) -> str:
        """The loopback WWN of a snapshot's device: the prefix, then the ID in 13 digits."""
        return f"{self.wwn_prefix}{snapshot_id:013d}"

    @staticmethod
    def target(snapshot_id: int) -> str:
        """The TCMU target of a snapshot's device, in the HBA (and its LUN link's name)."""
        return f"dev_{snapshot_id}"

    @property
    def shares_prefix(self) -> bool:
        """Whether another tenant (this one ± a multiple of 100) names its WWNs alike."""
        return self.tenant >= WWN_PREFIXES
