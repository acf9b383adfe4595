"""SIGINT and SIGTERM end a run cleanly: the first one is a request the loop honours after the current step
(a checkpoint, `summary.json` with status `interrupted`, exit 128 + the signal: 130, 143); a second one raises
KeyboardInterrupt at once. A sweep starts no job after the request and still writes its report.

Under SLURM (submitit), the pre-emption signal (`SIGUSR2` by default, `SUBMITIT_PREEMPT_SIGNAL`) is a request
too; once the run has checkpointed, submitit's own handler requeues the job (`Preemption`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Callable, Iterator, Optional


class StopRequest:
    """Which signal asked the run to stop (None: none has)."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._shielding = 0  # inside `shielded()`: a second signal waits for the block's end
        self._deferred = False

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)

    def install(self, *signums: int) -> None:
        """Handle these signals (default SIGINT, SIGTERM) as requests; only the main thread can."""
        if threading.current_thread() is threading.main_thread():
            for signum in signums or (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
        elif self._shielding:
            self._deferred = True
        else:
            raise KeyboardInterrupt  # a second signal: stop now

    @contextlib.contextmanager
    def shielded(self) -> Iterator[None]:
        """A block a second signal does not cut short (a checkpoint write: torch turns an exception raised inside
        its writer into an `enforce fail` RuntimeError); the KeyboardInterrupt comes right after it."""
        self._shielding += 1
        try:
            yield
        finally:
            self._shielding -= 1
            if not self._shielding and self._deferred:
                self._deferred = False
                raise KeyboardInterrupt


# The one request of this process: lrtrain.cli installs it, the loop, the range test and the launcher read it.
STOP = StopRequest()


class Preemption:
    """submitit's pre-emption handler, deferred: the signal becomes a stop request, and `requeue()` (after the
    checkpoint) hands it to submitit, which requeues the job and exits."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.handler: Optional[Callable[..., Any]] = None

    def install(self) -> None:
        """Under a submitit job, take over its pre-emption signal; elsewhere do nothing."""
        try:
            from submitit import JobEnvironment
        except ImportError:
            return
        try:
            environment = JobEnvironment()
        except RuntimeError:  # not inside a submitit job
            return
        self.signum = environment._usr_sig()
        self.handler = signal.getsignal(self.signum)
        STOP.install(self.signum)

    @property
    def pending(self) -> bool:
        """The stop request is submitit's pre-emption signal."""
        return self.signum is not None and STOP.signum == self.signum and callable(self.handler)

    def requeue(self) -> None:
        """Let submitit's handler requeue the job (it exits the process)."""
        if self.pending:
            self.handler(self.signum, None)


PREEMPTION = Preemption()
