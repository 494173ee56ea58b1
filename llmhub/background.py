"""Background threads of a web process yield the CPU to its event loop."""

import contextlib
import os
import threading

BACKGROUND_NICENESS = 19


def thread_priority_lower() -> None:
    """Gives the calling thread the lowest CPU priority (Linux schedules threads one by one; a thread may always
    lower its own). A batch written by the usage writer then waits while a request is being served, instead of
    sharing the core with it for a scheduler slice (several milliseconds: the requests' p99). The thread still
    takes the interpreter lock only between statements, so the event loop never waits behind it for long."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux: priorities stay as they are
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICENESS)
