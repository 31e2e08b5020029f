"""A reading study you can defend: readers as accounts, blinding that holds, TLS or an explicit
--insecure-http off loopback, sessions that end, an audit chain an edit breaks, notes exported as
text. Through FastAPI's TestClient and the CLI; the expected values are the phantom set's own
labels, P values and file names (independent of the app), or a SHA-256 chain recomputed here."""
import csv
import hashlib
import json
import os
import re
import sqlite3
import stat

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from tests.app.support import add_reader, login, post_read, prepared_app, write_review_set
from vfa.cli import main as cli_main


@pytest.fixture
def data(tmp_path):
    return write_review_set(tmp_path / "set")


def _form_csrf(client) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)


def test_a_reader_cannot_log_in_or_post_as_another(data, tmp_path):
    app = prepared_app(data, tmp_path / "r.sqlite")
    alice_secret = add_reader(app.db, "alice")
    add_reader(app.db, "bob")
    c = TestClient(app)
    for reader, secret in (("bob", alice_secret), ("bob", ""), ("carol", alice_secret), ("alice", alice_secret[:-1])):
        resp = c.post("/login", data={"reader": reader, "secret": secret, "csrf": _form_csrf(c)},
                      follow_redirects=False)
        assert resp.status_code == 200 and "wrong secret" in resp.text, reader
        assert c.get("/api/me").status_code == 401
    csrf = login(c, "alice", secret=alice_secret)
    assert post_read(c, csrf, 1, fracture=1, reader="bob").status_code == 200  # a posted name is ignored
    conn = sqlite3.connect(app.db)
    assert conn.execute("SELECT reader FROM reads").fetchall() == [("alice",)]
    actions = [r[0] for r in conn.execute("SELECT action FROM audit ORDER BY id")]
    assert actions.count("login refused") == 4 and "login" in actions and actions[-1] == "read"


def _blinded_responses(client, n: int) -> dict:
    """Every response a blinded reader can fetch, by URL."""
    urls = ["/worklist", "/api/worklist", "/api/worklist?sort=p", "/api/worklist?per_page=500", "/api/me",
            "/agreement", "/agreement.json", "/login"]
    urls += [f"/{kind}/{k}" for k in range(1, n + 1) for kind in ("case", "api/case", "heatmap")]
    return {u: client.get(u) for u in urls}


def test_a_blinded_reader_sees_no_model_output_labels_paths_or_order(data, tmp_path):
    app = prepared_app(data, tmp_path / "r.sqlite")
    preds = pd.read_csv(data["predictions"])
    seer = TestClient(app)
    post_read(seer, login(seer, "alice"), 2, fracture=1, note="alice was here")
    blind = TestClient(app)
    csrf = login(blind, "bob", blinded=True)
    assert blind.get("/api/me").json()["blinded"] is True
    responses = _blinded_responses(blind, len(preds))
    names = {str(v) for col in ("file", "image_id") for v in preds[col]}
    names |= {os.path.splitext(os.path.basename(v))[0] for v in names} | {"norm/", "frac/", "alice"}
    values = {f"{p:.3f}" for p in preds["raw"]} | {repr(float(p)) for p in preds["raw"]}
    for url, resp in responses.items():
        text = resp.text
        leaked = [x for x in names | values if x in text]
        assert not leaked, (url, leaked[:5])
        assert "P(fracture)" not in text and "sup_ant" not in text, url
        if url.startswith(("/heatmap", "/agreement")):
            assert resp.status_code == 403, url
    case = responses["/api/case/3"].json()
    assert case["vertebrae"] == [] and not {"p", "call", "heatmap", "model_grade", "threshold"} & set(case)
    # the reader's own order: codes 1..N over every case, shuffled (labels in list order would be 0...0 1...1)
    codes = [r["idx"] for r in blind.get("/api/worklist?per_page=500").json()["rows"]]
    assert codes == list(range(1, len(preds) + 1))
    conn = sqlite3.connect(app.db)
    order = [r[0] for r in conn.execute("SELECT image_id FROM codes WHERE reader='bob' ORDER BY code")]
    assert sorted(order) == sorted(preds["image_id"]) and order != list(preds["image_id"])
    seed = json.loads(conn.execute("SELECT detail FROM audit WHERE action='blinded order'").fetchone()[0])["seed"]
    assert isinstance(seed, int)
    # a read posted under a code lands on the case behind that code, and the image is that case's
    assert post_read(blind, csrf, 1, fracture=0).json()["idx"] == 1
    assert conn.execute("SELECT image_id FROM reads WHERE reader='bob'").fetchone()[0] == order[0]
    listed = preds.reset_index().set_index("image_id")
    plain = seer.get(f"/image/{int(listed.loc[order[0], 'index']) + 1}").content
    assert blind.get("/image/1").content == plain


def test_blinding_is_the_accounts_not_a_form_field(data, tmp_path):
    app = prepared_app(data, tmp_path / "r.sqlite")
    secret = add_reader(app.db, "bob", blinded=True)
    c = TestClient(app)
    c.post("/login", data={"reader": "bob", "secret": secret, "csrf": _form_csrf(c), "blinded": "0"})
    assert c.get("/api/me").json()["blinded"] is True
    assert cli_main(["review", "readers", "set", "bob", "--blinded", "no", "--db", str(app.db)]) == 0
    assert c.get("/api/me").status_code == 401  # a change of blinding ends the reader's sessions


def test_sessions_end_at_logout_expiry_and_revocation(data, tmp_path, monkeypatch):
    from vfa.app import accounts

    app = prepared_app(data, tmp_path / "r.sqlite")
    c = TestClient(app)
    login(c, "alice")
    cookies = dict(c.cookies)
    c.post("/logout", data={})  # no CSRF token: the session ends all the same
    assert TestClient(app, cookies=cookies).get("/api/me").status_code == 401
    login(c, "alice")
    now = accounts.time.time()
    monkeypatch.setattr(accounts.time, "time", lambda: now + accounts.IDLE + 1)
    assert c.get("/api/me").status_code == 401
    monkeypatch.undo()
    login(c, "alice")
    assert cli_main(["review", "readers", "revoke", "alice", "--db", str(app.db)]) == 0
    assert c.get("/api/me").status_code == 401
    assert c.get("/worklist", follow_redirects=False).headers["location"] == "/login"


def test_tls_cookies_are_secure_and_host_prefixed(data, tmp_path):
    app = prepared_app(data, tmp_path / "r.sqlite", secure=True, cookie="vfa8443")
    c = TestClient(app, base_url="https://testserver")
    login(c, "alice")
    raw = [h for h in c.get("/login").headers.get_list("set-cookie")]
    assert raw and all(h.startswith("__Host-vfa8443_") and "Secure" in h and "HttpOnly" in h for h in raw)


def test_off_loopback_needs_tls_or_insecure_http(data, tmp_path, monkeypatch, capsys):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: seen.update(host=self.config.host,
                                                                        ssl=self.config.ssl_certfile))
    db = tmp_path / "r.sqlite"
    base = ["review", "--predictions", str(data["predictions"]), "--images", str(data["images"]), "--db", str(db),
            "--host", "0.0.0.0", "--port", "8123"]
    assert cli_main(base) == 2
    assert "without TLS" in capsys.readouterr().err and not seen
    assert cli_main(base + ["--insecure-http"]) == 0
    out = capsys.readouterr().out
    assert seen == {"host": "0.0.0.0", "ssl": None} and "http://0.0.0.0:8123/" in out and "token" not in out
    secret_file = tmp_path / "r.sqlite.secret"
    secret = secret_file.read_text().strip()
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600 and secret not in out  # single user: a 0600 file
    assert cli_main(base + ["--certfile", str(tmp_path / "none.pem"), "--keyfile", str(tmp_path / "k.pem")]) == 2
    assert "TLS file not found" in capsys.readouterr().err


def test_export_writes_notes_as_text_and_an_edit_breaks_the_chain(data, tmp_path):
    app = prepared_app(data, tmp_path / "r.sqlite")
    c = TestClient(app)
    csrf = login(c, "alice")
    for note in ('=HYPERLINK("http://x","y")', "+1", "-2", "@SUM(A1)", "fine"):
        assert post_read(c, csrf, 1, fracture=1, note=note).status_code == 200
    out, trail = tmp_path / "reads.csv", tmp_path / "audit.csv"
    assert cli_main(["review", "export", "--db", str(app.db), "--out", str(out), "--audit", str(trail)]) == 0
    assert pd.read_csv(out)["note"].tolist() == ["fine"]
    rows = list(csv.DictReader(trail.open()))
    notes = [json.loads(r["detail"]).get("note") for r in rows if r["action"] in ("read", "amendment")]
    assert notes[0] == '=HYPERLINK("http://x","y")'  # the trail keeps what was typed ...
    prev = "0" * 64  # ... and a monitor recomputes the chain from the file alone
    for r in rows:
        canonical = json.dumps([r["at"], r["reader"], r["client"], r["action"], json.loads(r["detail"])],
                               sort_keys=True, separators=(",", ":"))
        assert r["prev"] == prev and hashlib.sha256((prev + canonical).encode()).hexdigest() == r["hash"]
        prev = r["hash"]
    assert cli_main(["review", "verify", "--db", str(app.db)]) == 0
    conn = sqlite3.connect(app.db)  # an edit outside vfa: the last read's note
    conn.execute("UPDATE reads SET note='changed' WHERE version=5")
    conn.commit()
    assert cli_main(["review", "verify", "--db", str(app.db)]) == 1
    assert cli_main(["review", "export", "--db", str(app.db), "--out", str(out), "--force"]) == 2
    from vfa.app.results import as_text

    assert [as_text(x) for x in ("=1", "+1", "-1", "@1", "\t1", "1")] == ["'=1", "'+1", "'-1", "'@1", "'\t1", "1"]


def test_an_exported_note_starting_with_a_formula_opens_as_text(data, tmp_path):
    app = prepared_app(data, tmp_path / "r.sqlite")
    c = TestClient(app)
    post_read(c, login(c, "alice"), 1, fracture=1, note='=HYPERLINK("http://evil","click")')
    out = tmp_path / "reads.csv"
    assert cli_main(["review", "export", "--db", str(app.db), "--out", str(out)]) == 0
    with out.open(newline="") as f:
        note = next(csv.DictReader(f))["note"]
    assert note == "'=HYPERLINK(\"http://evil\",\"click\")"
    import openpyxl

    wb = openpyxl.Workbook()  # what Excel does with the cell: a string, not a formula
    wb.active["A1"] = note
    assert wb.active["A1"].data_type == "s"
