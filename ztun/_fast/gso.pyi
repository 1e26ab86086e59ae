import numpy as np

from .batch import PacketBatch

NO_ROOM: int

def gso_split(batch: PacketBatch, i: int, out: PacketBatch, first: int = 0) -> int: ...

def gro_udp(batch: PacketBatch, n: int, segs: np.ndarray, max_segments: int = 64) -> int: ...
