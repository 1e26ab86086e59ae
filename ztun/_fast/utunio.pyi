from typing import Any

import numpy as np

HDR: int
AF_INET: int
AF_INET6: int
DROP_SHORT: int
DROP_FAMILY: int
N_DROPS: int

def read_batch(fd: int, batch: Any, drops: np.ndarray, blocking: bool = False) -> int: ...
def write_batch(fd: int, batch: Any, n: int, errnos: np.ndarray, only_verdict: int = -1) -> int: ...
