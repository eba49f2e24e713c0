"""Stopping a run cleanly: SIGINT / SIGTERM save the step training is on, then raise Stopped,
whose text says which step checkpoint.pt holds."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from model import load_tensors


class Stopped(KeyboardInterrupt):
    """train() ended by SIGINT or SIGTERM (a KeyboardInterrupt, as Ctrl-C is in a notebook);
    its text says which step checkpoint.pt holds. main() exits with 128 + signum."""

    def __init__(self, signum: int, text: str = "", at_once: bool = False):
        super().__init__(text)
        self.signum, self.at_once = signum, at_once


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (Slurm, Kubernetes, docker stop, systemd) during train().

    While not `deferred` (setting up, evaluating) a signal raises Stopped wherever the program
    is: no trained step is lost. While `deferred` (the training loop) it only sets `signum`;
    the loop saves the step it is on and raises Stopped itself. A second Ctrl-C raises at once.
    Outside the main thread, where Python cannot catch signals, it does nothing."""

    def __init__(self):
        self.signum, self.deferred, self.raised, self.old = 0, False, False, {}
        self.rank, self.state = 0, None  # for the message: who speaks, where training is

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self.old = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.old.items():
            signal.signal(s, handler)

    def handle(self, signum: int, frame) -> None:
        again, self.signum = self.signum != 0, self.signum or signum
        if not self.raised and (not self.deferred or (again and signum == signal.SIGINT)):
            self.raised = True  # later signals must not interrupt the way out
            if self.rank == 0:
                os.write(2, b"\n")  # end a progress bar's line: the message comes on its own
            raise Stopped(signum, at_once=again)
        if self.deferred and not again and self.rank == 0:  # os.write: print is not reentrant
            name = signal.Signals(signum).name
            os.write(2, f"\n{name}: saving after this step (Ctrl-C again: stop at once)\n".encode())


def stop_message(e: Stopped, out: str | Path, steps: int, step: int | None) -> str:
    """'stopped at step N (SIGTERM); OUT/checkpoint.pt holds step N; resume with --resume'.
    `out`: the run's folder, `steps`: the steps it trains to, `step`: where training was
    (None: before it began)."""
    path = Path(out) / "checkpoint.pt"
    name = signal.Signals(e.signum).name
    stopped, why = (
        ("stopped at once", f"(second {name})") if e.at_once else ("stopped", f"({name})")
    )
    try:
        saved = load_tensors(path, mmap=True)["step"]
    except Exception:  # no checkpoint.pt (yet)
        return f"{stopped} {why} before anything was saved: nothing to resume"
    where = "before training" if step is None else f"at step {step}"
    end = "resume with --resume" if saved < steps else "its training is complete"
    return f"{stopped} {where} {why}; {path} holds step {saved}; {end}"
