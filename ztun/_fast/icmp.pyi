import numpy as np

from .batch import PacketBatch

REPLY_TTL: int

def echo_batch(
    batch: PacketBatch,
    classify: bool = True,
    verdict_counts: np.ndarray | None = None,
    drop_counts: np.ndarray | None = None,
) -> int: ...
