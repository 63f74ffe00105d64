"""A watchdog for collectives: stop the process when one waits longer than a timeout.

In a data-parallel run every process waits for the others in each step's gradient all-reduce.
MLX's ring backend raises `RuntimeError` ("connection to a peer was lost") when a peer's
process exits, since the operating system closes its sockets; but a peer that hangs (stopped,
swapping, deadlocked) or a machine that drops off the network closes nothing, and the
collective then blocks forever. `Watchdog.guard(what)` arms a deadline around such a call; a
daemon thread checks it once a second (MLX releases the GIL while it waits) and, past the
deadline, writes one line naming the rank, the call and the fix to stderr and ends the process
with `os._exit(EXIT_CODE)`. `mlx.launch` then stops the other processes, as it does whenever a
rank exits with a non-zero status.

The timeout bounds one guarded call: a training step (so it must exceed the longest step, the
first one's compilation included, plus rank 0's longest checkpoint save), or an exchange.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator

EXIT_CODE = 4  # `mlx_qat.train`'s status for "another process of the run died or hung"


class Watchdog:
    """Arms a deadline of `timeout_s` around blocking calls; ends the process when one is
    missed (`with Watchdog(300, rank=1).guard("training step 12"): step()`)."""

    def __init__(self, timeout_s: float, rank: int, exit_code: int = EXIT_CODE):
        if not timeout_s > 0:
            raise ValueError(f"dist_timeout={timeout_s}: must be > 0 seconds")
        self.timeout_s = float(timeout_s)
        self.rank = rank
        self.exit_code = exit_code
        self._lock = threading.Lock()
        self._armed: tuple[float, str] | None = None  # (deadline, what)
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Run the block under the deadline `now + timeout_s` (an inner guard replaces the
        outer one while it runs)."""
        self._start()
        with self._lock:
            outer, self._armed = self._armed, (time.monotonic() + self.timeout_s, what)
        try:
            yield
        finally:
            with self._lock:
                self._armed = outer

    def message(self, what: str) -> str:
        return (
            f"mlx_qat.train: rank {self.rank}: {what} waited more than {self.timeout_s:g} s "
            "for the other processes (--dist-timeout): one of them died, hangs, or lost its "
            "network link. Stopping this process; after fixing the cause, run the same "
            "command with --resume to continue from the last checkpoint"
        )

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="mlx_qat-watchdog")
            self._thread.daemon = True
            self._thread.start()

    def _watch(self) -> None:
        period = min(1.0, self.timeout_s / 4)
        while True:
            time.sleep(period)
            with self._lock:
                armed = self._armed
            if armed is not None and time.monotonic() > armed[0]:
                try:
                    sys.stderr.write(self.message(armed[1]) + "\n")
                    sys.stderr.flush()
                finally:
                    os._exit(self.exit_code)
