"""Per-session job control: Stop flags (a tab stops only its own job) and live-preview supersession."""

from __future__ import annotations

import threading

GPU = "gpu"  # the one concurrency group every GPU event shares


class StopFlags:
    def __init__(self) -> None:
        self._flags: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> threading.Event:
        """A fresh flag for the job `session` is about to run (a Stop pressed earlier is forgotten)."""
        with self._lock:
            flag = self._flags[session] = threading.Event()
            return flag

    def stop(self, session: str) -> bool:
        """Ask the running job of `session` to stop; False when it has none."""
        with self._lock:
            flag = self._flags.get(session)
        if flag is None:
            return False
        flag.set()
        return True

    def finish(self, session: str, flag: threading.Event) -> None:
        with self._lock:
            if self._flags.get(session) is flag:
                del self._flags[session]


class Latest:
    """Per-session edit counters for live previews: each edit supersedes the previews before it.

    An edit bumps the counter at once (outside the queue); a preview remembers the value it started
    with and is stale, so it waits no further and stops at its next step, once they differ."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def bump(self, session: str) -> int:
        with self._lock:
            self._counts[session] = self._counts.get(session, 0) + 1
            return self._counts[session]

    def current(self, session: str) -> int:
        with self._lock:
            return self._counts.get(session, 0)

    def stale(self, session: str, token: int) -> bool:
        return self.current(session) != token
