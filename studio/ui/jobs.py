"""Per-session job control: Stop flags (a tab stops only its own job) and live-preview supersession."""

from __future__ import annotations

import os
import queue
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from studio.deploy import on_zero_gpu

GPU = "gpu"  # the one concurrency group every GPU event shares


class StopFlag:
    """One job's Stop, set from the page and read by the job at each step (threading.Event's
    `set`/`is_set`). On a ZeroGPU Space the job runs in `spaces`' worker process, which gets a
    pickled copy of the flag: a flag with a `path` also touches that file when set, and the copy
    reads the file, one `os.path.exists` a step."""

    def __init__(self, path: Path | None = None, is_set: bool = False) -> None:
        self.path = path  # a file under a private folder, named by a random per-job token
        self.started = False  # False while its job still waits in Gradio's queue
        self._event = threading.Event()
        if is_set:
            self._event.set()

    def set(self) -> None:
        self._event.set()
        if self.path is not None:
            self.path.touch()

    def is_set(self) -> bool:
        return self._event.is_set() or (self.path is not None and os.path.exists(self.path))

    def __reduce__(self) -> tuple:  # what crosses to ZeroGPU's worker: the file and the state so far
        return StopFlag, (self.path, self.is_set())


class StopFlags:
    """Each session's Stop flags, one per tab (`session` is "<session hash>/<task>").

    A page's Generate click `expect`s its job at once, before the job waits in Gradio's queue, so a
    Stop pressed while it waits reaches it: the job finds its flag set when it `start`s and does
    nothing. A Stop with no job queued or running is forgotten."""

    def __init__(self, folder: Path | None = None) -> None:
        self._flags: dict[str, StopFlag] = {}
        self._lock = threading.Lock()
        self._folder = folder  # where flags are files too; made on first use on a ZeroGPU Space

    def _new(self) -> StopFlag:
        if self._folder is None and on_zero_gpu():
            self._folder = Path(tempfile.mkdtemp(prefix="studio-stop-"))  # private (0700)
        return StopFlag(None if self._folder is None else self._folder / secrets.token_hex(16))

    def expect(self, session: str) -> None:
        """Generate was pressed: a fresh flag for the job on its way (a Stop pressed before is
        forgotten); a running job keeps its own."""
        with self._lock:
            flag = self._flags.get(session)
            if flag is None or not flag.started:
                self._flags[session] = self._new()

    def start(self, session: str) -> StopFlag:
        """The flag of the job `session` starts now: the one its click made (set if Stop was
        pressed while it waited), else a fresh one."""
        with self._lock:
            flag = self._flags.get(session)
            if flag is None or flag.started:  # not expected (an API call), or another job of it runs
                flag = self._flags[session] = self._new()
            flag.started = True
            return flag

    def stop(self, session: str) -> StopFlag | None:
        """Ask the queued or running job of `session` to stop; its flag, or None when it has none."""
        with self._lock:
            flag = self._flags.get(session)
        if flag is not None:
            flag.set()
        return flag

    def finish(self, session: str, flag: StopFlag) -> None:
        with self._lock:
            if self._flags.get(session) is flag:
                del self._flags[session]
        if flag.path is not None:
            flag.path.unlink(missing_ok=True)


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


def stream_job(run: Callable[..., Any], request: Any, models: Any, flag: Any,
               previews: bool = True, every_s: float = 0.5) -> Iterator[tuple[str, Any]]:
    """Run `run(request, models, on_step)` in a thread of its own and follow it from here.

    Yields ("step", StepEvent) at most every `every_s` seconds (with `images`, a cheap preview of
    the latents, in the event's place when `previews`), ("wait", message) while another job holds
    the GPU, and finally ("done", Result); an error of the job is raised here. `flag` (a StopFlag
    or threading.Event) stops the job at its next step; so does the consumer going away (a closed
    page)."""
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
