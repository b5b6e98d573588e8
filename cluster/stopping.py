"""A clean stop on SIGTERM: what `ray job stop`, Kubernetes and most schedulers send.

Before PPO starts there is nothing worth saving, so the signal ends the run at once (the
driver's `finally` still releases the actors). Once the PPO loop runs, the signal only sets a
flag: the loop finishes the step in progress, writes its metrics line and a checkpoint, and
the run ends without evaluation; `--resume` continues it. `ray job stop` sends SIGKILL
RAY_JOB_STOP_WAIT_TIME_S seconds later (3 by default, set on the head): a kill before the
checkpoint is renamed into place leaves the previous one, which is whole.
"""
from __future__ import annotations

import signal
import threading

EXIT_STOPPED = 128 + signal.SIGTERM   # 143: the shell's code for "ended by SIGTERM"


class Stopped(Exception):
    """The run stopped on request after `step`, with a checkpoint of that step on disk."""

    def __init__(self, step: int):
        super().__init__(f"stopped after step {step}")
        self.step = step


class StopRequest:
    def __init__(self, log=print):
        self.log = log
        self.requested = False
        self.graceful = False   # True while the PPO loop can stop at a step boundary
        self._previous = None

    def install(self) -> "StopRequest":
        # Signal handlers can only be set from the main thread (a driver embedded in a thread,
        # as in some tests, keeps the default action).
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        if not self.graceful:
            self.log("SIGTERM before PPO started: nothing to checkpoint yet, stopping now")
            raise SystemExit(EXIT_STOPPED)
        if not self.requested:
            self.log("SIGTERM: stopping after the step in progress (it is checkpointed first)")
        self.requested = True
