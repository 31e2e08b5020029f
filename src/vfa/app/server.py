"""The review web app (FastAPI + Jinja2): login (a reader's account and secret, vfa.app.accounts),
the worklist, the case view, reads posted as JSON, the agreement page. Every route takes integers
or fixed names only: an image is the file resolved at start-up for case N, never a path from the
request. A blinded session's case numbers are its reader's codes, never the list index."""
from __future__ import annotations

import io
import json
import mimetypes
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from vfa.app import accounts, audit
from vfa.app import db as dbm
from vfa.app import worklist as wl
from vfa.app.cases import LEVELS
from vfa.app.results import agreement_report
from vfa.app.security import Guard, same
from vfa.io.identifiers import public_path
from vfa.spine import FRACTURE_SHAPES

HERE = Path(__file__).parent
STATIC = {p.name: p.read_bytes() for p in (HERE / "static").iterdir() if p.is_file()}
CSP = ("default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")


@dataclass
class Settings:
    hosts: set[str] | None = field(default_factory=lambda: {"127.0.0.1", "localhost", "::1", "testserver"})
    cookie: str = "vfa"              # cookie name prefix (the port is added: two servers, two sessions)
    secure: bool = False             # served over TLS: Secure, __Host- cookies
    reader: str = ""                 # the login form's default name
    blind: bool = False              # every session blinded
    keep_identifiers: bool = False
    image_cache: int = 64


def _png(path: str) -> bytes:
    import numpy as np
    from PIL import Image

    from vfa.io import read_image

    arr = read_image(path)
    buf = io.BytesIO()
    Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _script_json(data) -> str:
    """JSON safe inside <script>: no '<', '>' or '&' (a note cannot close the script element)."""
    return json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@dataclass
class AppContext:
    """What every route reads: the settings, this app's database connections, its templates, its
    cookie names and its image cache (one per app, so two apps never share cached images)."""
    settings: Settings
    local: dbm.Local
    templates: Jinja2Templates
    session_cookie: str
    login_cookie: str
    png: Callable[[str], bytes]

    def session(self, request: Request) -> dict | None:
        sess = accounts.get_session(self.local.get(), request.cookies.get(self.session_cookie))
        if sess:
            sess["blinded"] = bool(sess["blinded"]) or self.settings.blind
        return sess

    def case_idx(self, sess: dict, number: int) -> int | None:
        """The case behind the number a session uses: a blinded reader's code, else the index."""
        return accounts.case_of_code(self.local.get(), sess["reader"], number) if sess["blinded"] else number

    def set_cookie(self, resp: Response, name: str, value: str) -> None:
        resp.set_cookie(name, value, httponly=True, samesite="strict", secure=self.settings.secure, path="/")

    def case_row(self, idx: int):
        return self.local.get().execute("SELECT * FROM cases WHERE idx=?", (idx,)).fetchone()

    def page(self, request, name, sess, **ctx):
        meta = dbm.get_meta(self.local.get())
        return self.templates.TemplateResponse(request, name, {"sess": sess, "meta": meta, **ctx})

    def case_data(self, row, sess, number: int) -> dict:
        """A case as its page and /api/case show it; a blinded session gets no outline either (the
        six points encode the model's heights, hence its grades) and its own case number."""
        blind = sess["blinded"]
        verts = [] if blind else json.loads(row["vertebrae"] or "[]")
        mine = dbm.history(self.local.get(), row["image_id"], sess["reader"])
        if blind:
            mine = [{k: v for k, v in r.items() if k not in ("image_id", "id", "request_id")} for r in mine]
        data = {"idx": number, "image": f"/image/{number}", "vertebrae": verts, "levels": LEVELS,
                "read": mine[-1] if mine else None, "history": mine, "blinded": blind}
        if not blind:
            meta = dbm.get_meta(self.local.get())
            data.update(p=row["p"], call=row["call"], threshold=meta.get("threshold"), model_grade=row["model_grade"],
                        heatmap=f"/heatmap/{row['idx']}" if row["heatmap"] else None)
        return data


def create_app(db_path: str | Path, settings: Settings | None = None) -> FastAPI:
    """The ASGI app serving the review database at `db_path` (its cases stored by `serve`). The
    routes are small closures over one AppContext, registered group by group in a fixed order."""
    s = settings or Settings()
    prefix = f"__Host-{s.cookie}" if s.secure else s.cookie  # __Host-: Secure, this host only, Path=/
    ctx = AppContext(s, dbm.Local(db_path), Jinja2Templates(directory=str(HERE / "templates")),
                     f"{prefix}_session", f"{prefix}_login", lru_cache(maxsize=s.image_cache)(_png))
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    for add_routes in (_add_basics, _add_login, _add_worklist, _add_cases, _add_reads):
        add_routes(app, ctx)
    guard = Guard(app, s.hosts)
    guard.db = Path(db_path)  # which database this app serves (readers are added to it beside the app)
    return guard


def _add_basics(app: FastAPI, ctx: AppContext) -> None:
    """The security headers on every response, the health check and the static files."""
    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update({"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                                 "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"})
        return response

    @app.get("/healthz")
    def healthz():
        return {"ok": True}

    @app.get("/static/{name}")
    def static(name: str):
        if name not in STATIC:
            return Response("not found", 404)
        return Response(STATIC[name], media_type=mimetypes.guess_type(name)[0] or "application/octet-stream")


def _client(request: Request) -> str:
    return request.client.host if request.client else ""


def _add_login(app: FastAPI, ctx: AppContext) -> None:
    """Login (a CSRF cookie on the form, then the reader's secret checked against the account and a
    session cookie), logout, each in the audit trail."""
    s, local, page = ctx.settings, ctx.local, ctx.page

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request):
        csrf = secrets.token_urlsafe(16)
        resp = page(request, "login.html", None, csrf=csrf, reader=s.reader, error="")
        ctx.set_cookie(resp, ctx.login_cookie, csrf)
        return resp

    @app.post("/login")
    async def login(request: Request):
        form = await request.form()
        reader, secret = str(form.get("reader", "")).strip()[:40], str(form.get("secret", ""))[:200]
        if not same(str(form.get("csrf", "")), request.cookies.get(ctx.login_cookie)):
            return Response("CSRF check failed: reload the login page", 403)
        account = await run_in_threadpool(lambda: accounts.check_login(local.get(), reader, secret))  # scrypt
        if account is None:
            await run_in_threadpool(lambda: audit.record(local.get(), "login refused", reader, _client(request), {}))
            return page(request, "login.html", None, csrf=request.cookies.get(ctx.login_cookie), reader=reader,
                        error="unknown reader, wrong secret or revoked account")
        sid, csrf = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        blinded = bool(account["blinded"]) or s.blind

        def start():
            conn = local.get()
            with audit.transaction(conn):
                accounts.new_session(conn, sid, reader, blinded, csrf)
                audit.record(conn, "login", reader, _client(request), {"blinded": blinded})
            if blinded:
                accounts.ensure_codes(conn, reader)
        await run_in_threadpool(start)  # off the loop
        resp = RedirectResponse("/worklist", 303)
        ctx.set_cookie(resp, ctx.session_cookie, sid)
        resp.delete_cookie(ctx.login_cookie, path="/", secure=s.secure, httponly=True, samesite="strict")
        return resp

    @app.post("/logout")
    async def logout(request: Request):
        """Always ends the session it is sent with (SameSite=Strict keeps other sites from sending it)."""
        sess = ctx.session(request)
        if sess:
            def end():
                with audit.transaction(local.get()):
                    local.get().execute("DELETE FROM sessions WHERE sid=?", (sess["sid"],))
                    audit.record(local.get(), "logout", sess["reader"], _client(request), {})
            await run_in_threadpool(end)
        resp = RedirectResponse("/login", 303)
        resp.delete_cookie(ctx.session_cookie, path="/", secure=s.secure, httponly=True, samesite="strict")
        return resp


def _add_worklist(app: FastAPI, ctx: AppContext) -> None:
    """The worklist, as a page and as JSON."""
    s, local, session = ctx.settings, ctx.local, ctx.session

    @app.get("/")
    def root():
        return RedirectResponse("/worklist", 303)

    @app.get("/worklist", response_class=HTMLResponse)
    def worklist_page(request: Request):
        sess = session(request)
        if not sess:
            return RedirectResponse("/login", 303)
        q = wl.Query.parse(request.query_params, sess["blinded"])
        rows, total = wl.page(local.get(), q, sess["reader"], sess["blinded"])
        for r in rows:
            if not sess["blinded"]:
                r["shown_id"] = r["image_id"] if s.keep_identifiers else public_path(r["image_id"])
        return ctx.page(request, "worklist.html", sess, rows=rows, total=total, q=q,
                        pages=max(1, -(-total // q.per_page)), splits=wl.splits(local.get()),
                        readers=wl.readers(local.get()), sorts=wl.SORTS,
                        statuses=wl.BLIND_STATUSES if sess["blinded"] else wl.STATUSES)

    @app.get("/api/worklist")
    def worklist_api(request: Request):
        sess = session(request)
        if not sess:
            return JSONResponse({"error": "log in first"}, 401)
        q = wl.Query.parse(request.query_params, sess["blinded"])
        rows, total = wl.page(local.get(), q, sess["reader"], sess["blinded"])
        if not s.keep_identifiers and not sess["blinded"]:
            for r in rows:
                r["image_id"], r["file"] = public_path(r["image_id"]), public_path(r["file"])
        return {"total": total, "page": q.page, "per_page": q.per_page, "rows": rows}


def _add_cases(app: FastAPI, ctx: AppContext) -> None:
    """One case: its page, its JSON, its image and its heatmap (never to a blinded reader)."""
    s, session, case_row = ctx.settings, ctx.session, ctx.case_row

    def listed(request: Request, number: int):
        """(session, case row) of case `number` as this session numbers cases; None for either."""
        sess = session(request)
        idx = ctx.case_idx(sess, number) if sess else None
        return sess, (case_row(idx) if idx is not None else None)

    @app.get("/case/{number:int}", response_class=HTMLResponse)
    def case_page(request: Request, number: int):
        sess, row = listed(request, number)
        if not sess:
            return RedirectResponse("/login", 303)
        if row is None:
            return Response("no such case", 404)
        q = wl.Query.parse(request.query_params, sess["blinded"])
        prev, nxt = wl.neighbours(ctx.local.get(), q, sess["reader"], number, sess["blinded"])
        data = ctx.case_data(row, sess, number)
        shown = row["image_id"] if s.keep_identifiers else public_path(row["image_id"])
        idents = json.loads(row["identifiers"] or "{}") if s.keep_identifiers and not sess["blinded"] else {}
        return ctx.page(request, "case.html", sess, case=data, shown_id=shown, identifiers=idents, q=q, prev=prev,
                        next=nxt, data_json=_script_json({**data, "csrf": sess["csrf"], "prev": prev, "next": nxt,
                                                          "query": q.params(page=None)}), types=FRACTURE_SHAPES)

    @app.get("/api/case/{number:int}")
    def case_api(request: Request, number: int):
        sess, row = listed(request, number)
        if not sess:
            return JSONResponse({"error": "log in first"}, 401)
        return JSONResponse({"error": "no such case"}, 404) if row is None else ctx.case_data(row, sess, number)

    @app.get("/image/{number:int}")
    def image(request: Request, number: int):
        from vfa.io import BadImageError

        row = listed(request, number)[1]
        if row is None:
            return Response("not found", 404)
        try:
            return Response(ctx.png(row["path"]), media_type="image/png")
        except BadImageError as exc:
            return Response(f"cannot read the image: {exc.reason}", 422)

    @app.get("/heatmap/{number:int}")
    def heatmap(request: Request, number: int):
        sess, row = listed(request, number)
        if sess and sess["blinded"]:
            return Response("blinded: the model's output is hidden", 403)
        if row is None or not row["heatmap"]:
            return Response("not found", 404)
        try:
            body = Path(row["heatmap"]).read_bytes()
        except OSError:
            return Response("heatmap file is gone", 404)
        return Response(body, media_type=mimetypes.guess_type(row["heatmap"])[0] or "image/png")


def _add_reads(app: FastAPI, ctx: AppContext) -> None:
    """Posting a read, who is logged in, and the agreement between readers (never to a blinded one)."""
    local, session = ctx.local, ctx.session

    @app.post("/api/reads")
    async def post_read(request: Request):
        sess = session(request)
        if not sess:
            return JSONResponse({"error": "log in first"}, 401)
        if not same(request.headers.get("x-csrf-token"), sess["csrf"]):
            return JSONResponse({"error": "CSRF check failed"}, 403)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": "send application/json"}, 415)
        try:
            data = json.loads(await request.body())
            read = dbm.clean_read(data)
            number = int(data.get("idx"))
            idx = ctx.case_idx(sess, number)
            row = ctx.case_row(idx) if idx is not None else None
        except (ValueError, TypeError, AttributeError) as exc:
            return JSONResponse({"error": str(exc) or "bad read"}, 422)
        if row is None:
            return JSONResponse({"error": "no such case"}, 404)
        saved = await run_in_threadpool(  # in a worker thread, with that thread's connection
            lambda: dbm.add_read(local.get(), row["image_id"], sess["reader"], read, sess["blinded"], _client(request)))
        if sess["blinded"]:
            saved.pop("id", None)
        return {"ok": True, "idx": number, **saved}

    @app.get("/api/me")
    def me(request: Request):
        sess = session(request)
        if not sess:
            return JSONResponse({"error": "log in first"}, 401)
        return {"reader": sess["reader"], "blinded": sess["blinded"], "csrf": sess["csrf"]}

    @app.get("/agreement", response_class=HTMLResponse)
    def agreement_page(request: Request):
        sess = session(request)
        if not sess:
            return RedirectResponse("/login", 303)
        if sess["blinded"]:
            return Response("blinded: other readers' reads are hidden", 403)
        return ctx.page(request, "agreement.html", sess, result=agreement_report(local.get()))

    @app.get("/agreement.json")
    def agreement_json(request: Request):
        sess = session(request)
        if not sess or sess["blinded"]:
            return JSONResponse({"error": "log in (not blinded) first"}, 401 if not sess else 403)
        return agreement_report(local.get())
