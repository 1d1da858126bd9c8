"""Whose saved presets and training runs a visitor sees. No gradio and no torch here.

On a workstation (Studio on 127.0.0.1 with no logins) every visitor is the machine's owner: one
shared folder of presets and of runs, as in A1111 or ComfyUI. Once others can reach Studio (a
share link, a non-loopback address, logins, a Space) each visitor gets folders of their own,
<folder>/<owner>/, and sees only those (plus the shipped presets):
  - a logged-in user (--auth) is "user-<hash of the name>", the same on any browser;
  - an anonymous page is "browser-<hash of a random token>" kept in the browser's localStorage,
    so a reload or a restart of Studio finds the same presets and runs;
  - an API caller without a login is "session-<hash of its session>": its own, for that session.
Owner names are hashes: folder-safe, and no name or token is written to disk in the clear.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
from pathlib import Path
from typing import Any

TOKEN = re.compile(r"[0-9a-f]{32}")  # what `new_token` makes; anything else a browser sends is ignored
MODES = ("auto", "shared", "private")


def new_token() -> str:
    return secrets.token_hex(16)


def _owner(kind: str, secret: str) -> str:
    return f"{kind}-{hashlib.sha256(f'{kind}:{secret}'.encode()).hexdigest()[:24]}"


def is_private(mode: str, exposed: bool, has_auth: bool) -> bool:
    """Whether each visitor gets their own folders. `--user-data auto` makes them so as soon as anyone
    but the machine's owner may open Studio: on a share link or a non-loopback address (a Space
    listens on 0.0.0.0), or with logins."""
    if mode not in MODES:
        raise ValueError(f"--user-data must be one of {', '.join(MODES)}, got {mode!r}")
    return mode == "private" or mode == "auto" and (exposed or has_auth)


class Owners:
    """Maps a Gradio request to its owner (None when everything is shared) and an owner to its folder."""

    def __init__(self, private: bool = False) -> None:
        self.private = private
        self._pages: dict[str, str] = {}  # session hash -> owner, bound when a page loads
        self._lock = threading.Lock()

    def bind(self, request: Any, token: Any) -> str | None:
        """Called when a page loads, with the token its browser kept (None on a first visit).
        Returns the token the browser should keep (a new one if it had none or a malformed one)."""
        if not self.private:
            return token if isinstance(token, str) else None
        token = token if isinstance(token, str) and TOKEN.fullmatch(token) else new_token()
        session = getattr(request, "session_hash", None)
        if session:
            with self._lock:
                self._pages[session] = _owner("browser", token)
        return token

    def forget(self, request: Any) -> None:
        """The page closed: its session ends (its folders stay on disk)."""
        with self._lock:
            self._pages.pop(getattr(request, "session_hash", None) or "", None)

    def of(self, request: Any) -> str | None:
        """The owner of `request`: None when shared; else its login, its page's browser, or its session."""
        if not self.private:
            return None
        username = getattr(request, "username", None)
        if username:
            return _owner("user", str(username))
        session = getattr(request, "session_hash", None) or ""
        with self._lock:
            bound = self._pages.get(session)
        return bound or _owner("session", session or new_token())

    @staticmethod
    def folder(base: Path, owner: str | None) -> Path:
        """`base` itself when shared, else the owner's own folder inside it."""
        return Path(base) if owner is None else Path(base) / owner
