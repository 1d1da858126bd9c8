"""No server-side fetch of a URL a user gave: an ASGI middleware in front of Gradio's routes.

Gradio fetches two kinds of URL on the server before Studio sees a request: a file route naming a
URL (`/gradio_api/file=https://…`, streamed back) and an input file whose `path` is a URL (a
FileData payload, or gradio_client's `handle_file("https://…")`), which it downloads into its
upload folder. Its guard refuses private and loopback addresses, but any public host is still
fetched for anyone who can reach Studio. Studio never needs either — real uploads are files — so
both are refused here with 400 and a message. Everything else passes through untouched (request
bodies are read only for JSON POSTs under /gradio_api/, and replayed to Gradio as they came).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote

URL = re.compile(r"^\s*[a-z][a-z0-9+.-]*://", re.IGNORECASE)  # http://, https://, ftp://, file://
MESSAGE = b'{"error": "Studio does not fetch URLs on the server: upload the file itself."}'
MAX_BODY = 64 * 1024 * 1024  # JSON bodies are small (files are uploaded apart); larger ones pass unread


def names_a_url(value: Any, depth: int = 0) -> bool:
    """True when some object in a JSON value has a "path" that is a URL (what Gradio downloads)."""
    if depth > 64:
        return False
    if isinstance(value, dict):
        path = value.get("path")
        if isinstance(path, str) and URL.match(path):
            return True
        return any(names_a_url(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return any(names_a_url(v, depth + 1) for v in value)
    return False


class NoUrlFetch:
    """ASGI middleware refusing requests that would make Gradio fetch a URL (see the module doc)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = unquote(scope.get("path", ""))
        if "/file=" in path and URL.match(path.split("/file=", 1)[1]):
            return await refuse(send)
        if scope["method"] == "POST" and path.startswith("/gradio_api/") and is_json(scope):
            body, more = await read_body(receive)
            if not more:
                try:
                    if names_a_url(json.loads(body or b"null")):
                        return await refuse(send)
                except (ValueError, RecursionError):
                    pass  # not ours to judge: Gradio answers malformed JSON itself
            receive = replay(body, more, receive)
        await self.app(scope, receive, send)


def is_json(scope: dict) -> bool:
    headers = dict(scope.get("headers") or [])
    return b"json" in headers.get(b"content-type", b"").lower()


async def read_body(receive: Any) -> tuple[bytes, bool]:
    """The request body, up to MAX_BODY; `more` is True when it was longer (left unread)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if not message.get("more_body"):
            return b"".join(chunks), False
        if size > MAX_BODY:
            return b"".join(chunks), True


def replay(body: bytes, more: bool, receive: Any) -> Any:
    """A `receive` that first hands back what was read, then the rest from the client."""
    sent = False

    async def again() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return again


async def refuse(send: Any) -> None:
    await send({"type": "http.response.start", "status": 400,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(MESSAGE)).encode())]})
    await send({"type": "http.response.body", "body": MESSAGE})
