"""Cancels that arrive before the caller knows its job: an ASGI middleware in front of Gradio's
routes, and the record of the queue events it saw cancelled. No gradio and no torch here."""

from __future__ import annotations

import json
import threading
from typing import Any


class CancelledEvents:
    """Ids of queue events whose API caller cancelled them (see LateCancel); the newest `keep`."""

    def __init__(self, keep: int = 4096) -> None:
        self._ids: dict[str, None] = {}  # insertion-ordered: the oldest go first
        self._keep = keep
        self._lock = threading.Lock()  # added on the event loop, read by job threads

    def add(self, event_id: str) -> None:
        with self._lock:
            self._ids[event_id] = None
            while len(self._ids) > self._keep:
                del self._ids[next(iter(self._ids))]

    def __contains__(self, event_id: object) -> bool:
        with self._lock:
            return event_id in self._ids


def cancelled_events(app: Any) -> CancelledEvents:
    """The record of late cancels kept on the server `app` (a Starlette app: its `state`)."""
    if not hasattr(app.state, "studio_cancelled"):
        app.state.studio_cancelled = CancelledEvents()
    return app.state.studio_cancelled


class LateCancel:
    """ASGI middleware: remembers the queue events that gradio_client cancelled before it knew them.

    gradio_client's `job.cancel()` posts /cancel with the job's event id, which Gradio uses to take
    the job out of its queue (or to cancel it while it runs). Until /queue/join has answered, the
    id is unknown and goes as null: Gradio (6.31) then cancels only a job already running, so a job
    still queued ran to its end later. Once the client learns the id it posts /reset with it, which
    Gradio 6 ignores. This records that id (cancelled_events); Studio's GPU handlers look their own
    event up when they start and at every step. Requests pass on to Gradio unchanged."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        from studio.urlguard import is_json, read_body, replay

        if (scope["type"] == "http" and scope["method"] == "POST" and scope.get("path", "").endswith("/gradio_api/reset")
                and is_json(scope)):
            body, more = await read_body(receive)
            try:
                event_id = json.loads(body).get("event_id")
            except (ValueError, AttributeError):  # not a JSON object: Gradio answers it
                event_id = None
            if isinstance(event_id, str) and not more:
                cancelled_events(scope["app"]).add(event_id)
            receive = replay(body, more, receive)
        await self.app(scope, receive, send)
