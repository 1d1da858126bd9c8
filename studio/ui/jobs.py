"""Per-session job control: Stop flags (a tab stops only its own job) and live-preview supersession."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

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


def stream_job(run: Callable[..., Any], request: Any, models: Any, flag: threading.Event,
               previews: bool = True, every_s: float = 0.5) -> Iterator[tuple[str, Any]]:
    """Run `run(request, models, on_step)` in a thread of its own and follow it from here.

    Yields ("step", StepEvent) at most every `every_s` seconds (with `images`, a cheap preview of
    the latents, in the event's place when `previews`), ("wait", message) while another job holds
    the GPU, and finally ("done", Result); an error of the job is raised here. If the consumer goes
    away (a closed page), the job is asked to stop at its next step."""
    events: queue.Queue = queue.Queue()
    last = [0.0]

    def on_step(event: Any) -> bool:
        if event.message is not None:
            events.put(("wait", event.message))
        elif time.monotonic() - last[0] >= every_s or event.step == event.total:
            last[0] = time.monotonic()
            images = event.preview() if previews and event.preview is not None and event.step < event.total else None
            events.put(("step", (event, images)))
        return flag.is_set()

    def work() -> None:
        try:
            events.put(("done", run(request, models, on_step)))
        except BaseException as exc:  # handed to the consumer, who raises it
            events.put(("error", exc))

    threading.Thread(target=work, name=f"job-{request.TASK}", daemon=True).start()
    try:
        while True:
            kind, payload = events.get()
            if kind == "error":
                raise payload
            yield kind, payload
            if kind == "done":
                return
    finally:
        flag.set()  # no effect once the job is done; stops it when the consumer left early
