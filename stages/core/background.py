"""Writing results in a background thread while the network computes the next batch.

The network's kernels release Python's GIL, so HDF5 compression and PNG encoding in this thread run beside them
instead of after them; on a GPU, the thread also waits for the device-to-host copies the main thread no longer
waits for. Jobs run one at a time, in submission order.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable


class BackgroundWriter:
    """`submit(fn, *args)` runs `fn(*args)` in one writer thread. At most `depth` jobs wait (their inputs are
    held in memory), so a slow disk slows the caller down instead of filling the memory. A job's error is raised
    in the caller, at a later `submit` or when the `with` block ends; leaving the block waits for every job, so
    what follows (renaming a finished file into place) sees them all done."""

    def __init__(self, depth: int = 8):
        self.depth = depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsss-writer")
        self._pending: deque[Future] = deque()

    def submit(self, fn: Callable, *args) -> None:
        self._pending.append(self._pool.submit(fn, *args))
        while self._pending and (len(self._pending) > self.depth or self._pending[0].done()):
            self._pending.popleft().result()

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                while self._pending:
                    self._pending.popleft().result()
        finally:
            for job in self._pending:  # after an error: drop what has not started
                job.cancel()
            self._pool.shutdown(wait=True)
