"""Who is looking at the dashboard, and the checks of its forms (login, CSRF).

The session is one cookie, ``batchd_dashboard``, ``HttpOnly``, ``SameSite=Strict``, ``Path=
/dashboard``, ``Secure`` when the request came over https:

- with API keys (the API needs one): ``k.<the key, base64url>``, set by the login form once the
  :class:`~batchd.auth.Authenticator` accepts the key, and checked again on every request (a
  revoked key stops working within the authenticator's cache time);
- without keys (the ``default`` project, loopback): ``a.<random>``, set on the first visit, only
  so that forms have a CSRF token.

A form that changes something (cancel, logout) carries ``csrf`` = HMAC-SHA256 keyed by the
cookie's value over ``"csrf"``: stateless, so every API process behind a balancer computes the
same token, and unknowable to another site, which can neither read the cookie nor (``SameSite=
Strict``) have the browser send it. The POST is also refused when the browser says it comes from
elsewhere (``Sec-Fetch-Site`` other than ``same-origin``/``none``; without that header, an
``Origin`` that is not this server's).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs

from fastapi import HTTPException, Request
from starlette.responses import Response

from batchd.auth import DEFAULT_PROJECT
from batchd.errors import Unauthorized
from batchd.runtime import Services

__all__ = [
    "COOKIE",
    "COOKIE_PATH",
    "MAX_FORM_BYTES",
    "Viewer",
    "check_csrf",
    "check_origin",
    "clear_session",
    "csrf_token",
    "key_cookie",
    "login_required",
    "read_form",
    "set_session",
    "viewer",
]

COOKIE = "batchd_dashboard"
COOKIE_PATH = "/dashboard"
MAX_FORM_BYTES = 16_384
_KEY, _ANONYMOUS = "k.", "a."


@dataclass(frozen=True, slots=True)
class Viewer:
    """The caller: the projects it sees and its session."""

    project: str
    """The project of its key (``default`` without keys)."""
    admin: bool
    """An ``admin = true`` key of the configuration: it sees every project."""
    session: str
    """The session cookie's value (the key of the CSRF token)."""
    login: bool
    """Whether keys are needed (so there is a login, and a logout)."""
    new: bool = False
    """The session cookie is new: the response sets it."""

    @property
    def scope(self) -> str | None:
        """The project whose objects it sees; ``None``: every project."""
        return None if self.admin else self.project

    @property
    def csrf(self) -> str:
        return csrf_token(self.session)


def csrf_token(session: str) -> str:
    return hmac.new(session.encode(), b"csrf", hashlib.sha256).hexdigest()


def key_cookie(key: str) -> str:
    return _KEY + base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def _key_of(cookie: str) -> str | None:
    if not cookie.startswith(_KEY) or len(cookie) > 4096:
        return None
    encoded = cookie[len(_KEY) :]
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def login_required() -> HTTPException:
    return HTTPException(401, "Log in with an API key to see the dashboard.")


async def viewer(request: Request, svc: Services) -> Viewer:
    """The caller of ``request``: 401 (the login page) when keys are needed and its cookie has
    no valid key."""
    cookie = request.cookies.get(COOKIE, "")
    auth = svc.auth
    if auth is None or not await auth.required():
        if cookie.startswith(_ANONYMOUS) and 20 < len(cookie) < 100:
            return Viewer(DEFAULT_PROJECT, False, cookie, login=False)
        session = _ANONYMOUS + secrets.token_urlsafe(32)
        return Viewer(DEFAULT_PROJECT, False, session, login=False, new=True)
    key = _key_of(cookie)
    if key is None:
        raise login_required()
    try:
        project = await auth.project({"api-key": key})
    except Unauthorized:
        raise login_required() from None
    return Viewer(project, auth.is_admin(key), cookie, login=True)


def set_session(response: Response, request: Request, value: str) -> None:
    response.set_cookie(
        COOKIE,
        value,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_session(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def check_origin(request: Request) -> None:
    """403 when the browser says the form was posted from another site: by ``Sec-Fetch-Site``
    (every current browser sends it), else by ``Origin`` against this request's own scheme and
    ``Host`` (a proxy in front must pass ``Host`` through)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        if site not in ("same-origin", "none"):
            raise HTTPException(
                403, f"Refused: this form was posted from another site (Sec-Fetch-Site: {site})."
            )
        return
    origin = request.headers.get("origin")
    if origin is not None:
        own = f"{request.url.scheme}://{request.url.netloc}"
        if origin != own:
            raise HTTPException(
                403, f"Refused: this form was posted from {origin}, not from {own}."
            )


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (at most :data:`MAX_FORM_BYTES`)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, "This form is larger than the dashboard accepts.")
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "This form could not be read.") from None
    return {name: values[0] for name, values in fields.items()}


async def check_csrf(request: Request, seen: Viewer) -> dict[str, str]:
    """The POSTed form, once its origin and its CSRF token are right (403 otherwise)."""
    check_origin(request)
    form = await read_form(request)
    token = form.get("csrf", "")
    if seen.new or not hmac.compare_digest(token.encode(), seen.csrf.encode()):
        raise HTTPException(
            403,
            "Refused: the form's CSRF token is missing or wrong (the page may be from an "
            "earlier session). Reload the page and try again.",
        )
    return form
