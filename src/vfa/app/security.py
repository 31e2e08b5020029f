"""The server's guards, as one ASGI middleware run before any route: the request-size cap, the
Host check (a page on another site cannot reach a loopback server through DNS rebinding), and
the access token (off loopback always; on loopback when one is given). The token arrives once
as ?token=... (then kept in an HttpOnly cookie and dropped from the URL) or as a Bearer header.
CSRF tokens (per session, checked on every POST) are the routes' (vfa.app.server)."""
from __future__ import annotations

import hmac
import ipaddress
import secrets
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode

MAX_BODY = 64 * 1024       # a read is < 3 kB; there are no uploads
MAX_URL = 4096


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


def same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a).encode(), str(b).encode())


async def _reply(send, status: int, text: str, headers=()) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: size cap, Host check, token."""

    def __init__(self, app, token: str | None, hosts: set[str] | None, cookie: str, max_body: int = MAX_BODY):
        self.app, self.token, self.hosts, self.cookie, self.max_body = app, token, hosts, cookie, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") > MAX_URL:
            return await _reply(send, 414, "URL too long")
        if self.hosts is not None and headers.get("host", "").rsplit(":", 1)[0].strip("[]") not in self.hosts:
            return await _reply(send, 400, "unexpected Host header")
        try:
            length = int(headers.get("content-length") or 0)
        except ValueError:
            return await _reply(send, 400, "bad Content-Length")
        if length > self.max_body:
            return await _reply(send, 413, f"request body over {self.max_body} bytes")
        if self.token:
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            cookies = SimpleCookie(headers.get("cookie", ""))
            cookie = cookies[self.cookie].value if self.cookie in cookies else None
            bearer = headers.get("authorization", "").removeprefix("Bearer ").strip()
            if same(query.get("token"), self.token) and scope["method"] == "GET":
                rest = urlencode([(k, v) for k, v in query.items() if k != "token"])
                where = scope["path"] + (f"?{rest}" if rest else "")
                set_cookie = f"{self.cookie}={self.token}; HttpOnly; SameSite=Strict; Path=/"
                return await _reply(send, 303, "token accepted", [(b"location", where.encode("latin-1")),
                                                                  (b"set-cookie", set_cookie.encode())])
            if not (same(cookie, self.token) or same(bearer, self.token)):
                return await _reply(send, 401, "a token is required: open the URL vfa review printed")
        seen = 0

        async def capped():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge()
            return message

        try:
            await self.app(scope, capped, send)
        except BodyTooLarge:
            await _reply(send, 413, f"request body over {self.max_body} bytes")


class BodyTooLarge(Exception):
    pass
