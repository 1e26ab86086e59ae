from .batch import PacketBatch

NO_ROOM: int

def gso_split(batch: PacketBatch, i: int, out: PacketBatch, first: int = 0) -> int: ...
