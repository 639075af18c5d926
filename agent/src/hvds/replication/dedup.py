"""The block cache both ends of a replication connection keep in step, for deduplication.

The source sends a block's data once; when the same data is written again (a file copied inside
the VM, a zeroed-then-refilled buffer, the same package installed on two VMs of the group) it
sends only its 16-byte hash, and the target takes the data from its own copy of the cache.

No message keeps the two caches in step: both apply the same operations in the same order (the
source when it encodes, the target when it decodes the same entries) with the same capacity, so
they evict the same blocks. Both start empty on every new connection.
"""

from __future__ import annotations

from collections import OrderedDict

import xxhash

# Below this a reference saves too little to be worth a cache slot.
MIN_DEDUP_BYTES = 4096


def block_hash(data: bytes | bytearray) -> bytes:
    return xxhash.xxh3_128_digest(data)


class BlockCache:
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._blocks: OrderedDict[bytes, bytes | bytearray] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def get(self, digest: bytes) -> bytes | bytearray | None:
        """The data for ``digest``, marked as just used; None if not held."""
        data = self._blocks.get(digest)
        if data is not None:
            self._blocks.move_to_end(digest)
        return data

    def put(self, digest: bytes, data: bytes | bytearray) -> None:
        if len(data) > self.capacity_bytes or digest in self._blocks:
            return
        self._blocks[digest] = data
        self._bytes += len(data)
        while self._bytes > self.capacity_bytes:
            _, evicted = self._blocks.popitem(last=False)
            self._bytes -= len(evicted)
