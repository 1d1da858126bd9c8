"""No server-side fetch of users' URLs: the middleware in front of Gradio's routes."""

from __future__ import annotations

import asyncio
import json

import pytest

from studio.urlguard import NoUrlFetch, names_a_url


def call(method: str, path: str, body: bytes = b"", content_type: bytes = b"application/json", chunks: int = 1):
    """Run one request through the middleware over a fake app: (status, app saw the request, its body)."""
    seen = {}

    async def app(scope, receive, send):
        parts = []
        while True:
            message = await receive()
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        seen["body"] = b"".join(parts)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    size = max(1, -(-len(body) // chunks))
    pieces = [body[i:i + size] for i in range(0, len(body), size)] or [b""]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)]
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": [(b"content-type", content_type)]}
    asyncio.run(NoUrlFetch(app)(scope, receive, send))
    return sent[0]["status"], "body" in seen, seen.get("body"), sent


@pytest.mark.parametrize("target", ["https://example.com/cat.png", "http%3A%2F%2Fexample.com%2Fx", "HTTP://example.com",
                                    "ftp://example.com/a", "file:///etc/passwd"])
def test_a_file_route_naming_a_url_is_refused_before_gradio(target):
    status, reached, _, sent = call("GET", f"/gradio_api/file={target}")
    assert status == 400 and not reached and b"does not fetch URLs" in sent[1]["body"]


def test_a_payload_whose_file_path_is_a_url_is_refused_before_gradio():
    payload = {"data": [{"path": "https://example.com/cat.png", "meta": {"_type": "gradio.FileData"}}, "a prompt"]}
    status, reached, _, _ = call("POST", "/gradio_api/call/img2img", json.dumps(payload).encode(), chunks=3)
    assert status == 400 and not reached
    nested = {"data": [[{"image": {"path": " http://example.com/a"}}]], "fn_index": 3, "session_hash": "x"}
    assert call("POST", "/gradio_api/queue/join", json.dumps(nested).encode())[:2] == (400, False)


def test_everything_else_reaches_gradio_unchanged():
    upload = {"data": [{"path": "/tmp/gradio/abc/cat.png", "url": "http://127.0.0.1:7860/gradio_api/file=/tmp/gradio/"
                        "abc/cat.png", "meta": {"_type": "gradio.FileData"}}, "see https://example.com in text"]}
    body = json.dumps(upload).encode()
    assert call("POST", "/gradio_api/call/img2img", body, chunks=4)[:3] == (200, True, body)
    multipart = b"--x\r\nContent-Disposition: form-data; name=files\r\n\r\nhttps://example.com\r\n--x--"
    assert call("POST", "/gradio_api/upload", multipart, b"multipart/form-data; boundary=x")[:3] == (200, True, multipart)
    assert call("POST", "/gradio_api/call/txt2img", b"{not json")[:3] == (200, True, b"{not json")
    assert call("GET", "/gradio_api/file=/tmp/gradio/abc/cat.png")[:2] == (200, True)


def test_names_a_url_looks_only_at_file_paths():
    assert names_a_url({"a": [{"path": "https://x.org/y"}]})
    assert not names_a_url({"url": "https://x.org/y", "path": "/tmp/gradio/y"})
    assert not names_a_url(["https://x.org/y", {"prompt": "http://x"}])
    deep: list = []
    for _ in range(200):
        deep = [deep]
    assert not names_a_url(deep)  # bounded, not a RecursionError


def test_the_running_app_refuses_a_url_given_as_a_file(app):
    import httpx

    url, _ = app
    payload = {"data": [{"path": "https://example.com/cat.png", "meta": {"_type": "gradio.FileData"}}]}
    response = httpx.post(f"{url}gradio_api/call/img2img", json=payload, timeout=30)
    assert response.status_code == 400 and "does not fetch URLs" in response.text
    response = httpx.get(f"{url}gradio_api/file=https://example.com/cat.png", timeout=30)
    assert response.status_code == 400
