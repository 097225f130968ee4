"""torchrun as ``ee produce --nproc N`` starts it: ``torch.distributed.run`` itself, told apart
only in how it ends when a rank stops on a mistake of the user's.

Such a rank has printed its one-line error and exited with code 2. torchrun would then stop the
other ranks, log each step and raise ``ChildFailedError``, whose traceback and failure table say
nothing the line did not. Here that run ends with exit code 2 and the line alone: the agent's
log records are held back until the run ends and dropped in that one case. Any other ending (a
crash, a signal, success) prints everything torchrun would have printed, and a failure keeps
torchrun's own report and exit code. It takes torchrun's arguments::

    python -m ensemble_engine.commands.torchrun --standalone --nproc_per_node=2 \
        -m ensemble_engine produce ...
"""

from __future__ import annotations

import gc
import logging
import sys

USER_ERROR = 2  # the exit code of a rank that printed a user error (``ee``'s, click's)
AGENT_LOGGER = "torch.distributed.elastic"


class _HeldBack(logging.Handler):
    """Keeps the agent's log records, to pass on to torch's own handlers at the end, or not."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def main(argv: list[str] | None = None) -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    agent = logging.getLogger(AGENT_LOGGER)
    held = _HeldBack()
    agent.addHandler(held)
    agent.propagate = False
    user_error = False
    try:
        torchrun_main(argv)
    except ChildFailedError as exc:
        _, root_cause = exc.get_first_failure()
        user_error = root_cause.exitcode == USER_ERROR
        if not user_error:
            raise
    finally:
        agent.removeHandler(held)
        agent.propagate = True
        if not user_error:
            for record in held.records:
                agent.handle(record)
    if user_error:
        sys.exit(USER_ERROR)


if __name__ == "__main__":
    try:
        main()
    finally:
        gc.freeze()  # as ``ee`` does: the interpreter's last collections skip torch's objects
