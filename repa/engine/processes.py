"""What the processes of one launch share: the signals that stop them with a checkpoint, and
decisions the main process takes for all of them."""

from __future__ import annotations

import signal

# Ctrl-C, the scheduler's termination, and the preemption warnings batch systems send ahead of it (Slurm's
# --signal=USR1@..., SIGUSR2, SIGHUP when the session ends): each finishes the step and writes a checkpoint.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)


def main_decides(acc, work) -> None:
    """Run `work` on the main process; if it raises a RepaError, every process raises it (the
    others would otherwise wait at the next collective until a timeout)."""
    from repa.errors import RepaError

    error = None
    if acc.is_main_process:
        try:
            work()
        except RepaError as exc:
            error = exc
    if acc.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        message = [str(error) if error is not None else None]
        broadcast_object_list(message)
        if message[0] is not None and error is None:
            raise RepaError(message[0])
    if error is not None:
        raise error
