"""Browser sessions of the dashboard: the token traded once for an ``HttpOnly``, ``SameSite=Strict`` cookie.

``spinup serve`` prints a login URL carrying the token in its fragment (never sent to a server,
never in a log or a ``Referer``); the login page posts it and gets a session cookie back, named
for the server's port (cookies are shared by every port of a host). Sessions live in the server's
memory: a restart signs every browser out. A state-changing request must also come from the
dashboard's own origin (``Origin`` equal to the ``Host`` it was sent to).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from starlette.requests import Request

from ..auth import bearer_matches

SESSION_SECONDS = 7 * 24 * 3600  # a session unused this long ends
MAX_SESSIONS = 1000  # the oldest go first past this


@dataclass
class _Session:
    created: float
    used: float


class Sessions:
    """Login sessions of one server; ``token`` None (``--no-auth``) lets every browser in."""

    def __init__(self, token: str | None, port: int) -> None:
        self.token = token
        self.cookie = f"spinup_session_{port}"
        self._sessions: dict[str, _Session] = {}

    @property
    def open(self) -> bool:
        """Whether the server asks for no token at all."""
        return self.token is None

    def login(self, supplied: str) -> str | None:
        """A new session id when ``supplied`` is the token, else None."""
        if self.token is None or not hmac.compare_digest(supplied.strip().encode(), self.token.encode()):
            return None
        self._expire()
        while len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions, key=lambda key: self._sessions[key].used)
            del self._sessions[oldest]
        session = secrets.token_urlsafe(32)
        now = time.monotonic()
        self._sessions[session] = _Session(now, now)
        return session

    def logout(self, request: Request) -> None:
        """End the request's session, if it has one."""
        self._sessions.pop(request.cookies.get(self.cookie, ""), None)

    def session_of(self, request: Request) -> str | None:
        """The request's live session id (its cookie), or None."""
        session = request.cookies.get(self.cookie)
        entry = self._sessions.get(session or "")
        if session is None or entry is None:
            return None
        now = time.monotonic()
        if now - entry.used > SESSION_SECONDS:
            del self._sessions[session]
            return None
        entry.used = now
        return session

    def allows(self, request: Request) -> bool:
        """Whether the request is signed in: a session cookie, or the bearer token itself (scripts)."""
        if self.token is None:
            return True
        if self.session_of(request) is not None:
            return True
        headers = {k.lower().encode(): v.encode() for k, v in request.headers.items()}
        return bearer_matches(headers, self.token.encode())

    def label(self, request: Request) -> str:
        """A short, stable name of the request's session for events (a hash: the id itself is a credential)."""
        session = request.cookies.get(self.cookie) or "token"
        return hashlib.sha256(session.encode()).hexdigest()[:8]

    def set_cookie(self, session: str) -> str:
        """The ``Set-Cookie`` value of a new session."""
        return f"{self.cookie}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={SESSION_SECONDS}"

    def clear_cookie(self) -> str:
        """The ``Set-Cookie`` value that removes the session cookie."""
        return f"{self.cookie}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, s in self._sessions.items() if now - s.used > SESSION_SECONDS]:
            del self._sessions[key]


def same_origin(request: Request) -> bool:
    """Whether a state-changing request comes from the dashboard's own pages: its ``Origin`` names the host it
    was sent to (a missing ``Origin`` is refused), and the browser does not call it cross-site."""
    origin = request.headers.get("origin")
    host = request.headers.get("host")
    if not origin or not host or origin not in (f"http://{host}", f"https://{host}"):
        return False
    return request.headers.get("sec-fetch-site", "same-origin") == "same-origin"
