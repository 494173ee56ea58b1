"""Background threads of a web process yield the CPU to its event loop."""

import contextlib
import os
import threading

# Eight nice levels below the thread that started it: the kernel gives the thread about 1/7 of a core that the
# event loop keeps busy (each level is a factor of 1.25), and wakes the loop ahead of it. Lower still (nice 19
# under an app at nice -15, as `make bench` runs it) starved the usage writer at concurrency 16: its queue grew by
# about 500 rows a second, towards the cap past which rows are dropped.
BACKGROUND_NICENESS_STEP = 8


def thread_priority_lower() -> None:
    """Gives the calling thread a lower CPU priority than the one it was started with (Linux schedules threads one
    by one; a thread may always lower its own). A batch written by the usage writer then runs between requests,
    instead of sharing the core with them for a scheduler slice (several milliseconds: the requests' p99)."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux: priorities stay as they are
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread)
                                                    + BACKGROUND_NICENESS_STEP))
