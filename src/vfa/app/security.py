"""The server's guards, as one ASGI middleware run before any route: the request-size cap and the
Host check (a page on another site cannot reach a loopback server through DNS rebinding). Who may
read is each reader's account (vfa.app.accounts): every page but the login form, the health check
and the static files needs a session; CSRF tokens (per session, checked on every POST) are the
routes' (vfa.app.server)."""
from __future__ import annotations

import hmac
import ipaddress

MAX_BODY = 64 * 1024       # a read is < 3 kB; there are no uploads
MAX_URL = 4096


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a).encode(), str(b).encode())


async def _reply(send, status: int, text: str, headers=()) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: size cap, Host check."""

    def __init__(self, app, hosts: set[str] | None, max_body: int = MAX_BODY):
        self.app, self.hosts, self.max_body = app, hosts, max_body

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
