"""`vfa review` as a reader uses it: a real headless Chromium (Debian's, driven by Playwright) on a
live server. Open the worklist and a case, toggle the heatmap, record reads of two readers with the
keyboard, reload and find them, export, and check the agreement page against scikit-learn.

Needs Debian's chromium and the playwright package, test oracles (tests/oracles.py) that `make oracles`
installs: without them the test skips, saying why, or fails under VFA_REQUIRE_ORACLES=1 / CI=true.
VFA_REVIEW_SCREENSHOTS=DIR keeps the two screenshots there."""
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from tests import oracles
from tests.app.support import add_reader, free_port, start_server, write_review_set
from vfa.cli import main


@pytest.fixture
def browser_oracle():
    """Debian's chromium and Playwright's sync_playwright: a missing one skips (fails where required)."""
    return oracles.chromium(), oracles.playwright()


ALICE = ["2", "0", "y", "n", "3", "1"]    # keys pressed on cases 1..6, then Enter
BOB = ["2", "n", "0", "3", "1", "0"]
CALLS = {"2": (1, 2), "0": (0, 0), "y": (1, None), "n": (0, 0), "3": (1, 3), "1": (1, 1)}


@pytest.fixture
def server(tmp_path):
    data = write_review_set(tmp_path / "set", n=12)
    db, port = tmp_path / "review.sqlite", free_port()
    secrets = {"alice": add_reader(db, "alice"), "bob": add_reader(db, "bob", blinded=True)}
    proc = start_server(data, db, port, "--vertebrae", str(data["vertebrae"]))
    yield {"url": f"http://127.0.0.1:{port}", "db": db, "data": data, "secrets": secrets}
    proc.terminate()
    proc.wait(30)


def _login(browser, url, reader, secret):
    page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))  # a script error fails the test
    page.goto(f"{url}/login")
    page.fill("#reader-name", reader)
    page.fill("#secret", secret)
    with page.expect_navigation():
        page.click("#start")
    assert page.url.endswith("/worklist")
    return page


def _codes(db, reader) -> dict[int, int]:
    """{case index: the reader's code} (a blinded reader's case numbers)."""
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT c.idx, k.code FROM codes k JOIN cases c ON c.image_id = k.image_id "
                                 "WHERE k.reader=?", (reader,)).fetchall())
    finally:
        conn.close()


def _read_cases(page, keys):
    """From case 1, each key then Enter (save and go to the next case)."""
    page.keyboard.press("Enter")  # the worklist's first row
    page.wait_for_url("**/case/1*")
    for i, key in enumerate(keys, start=1):
        page.wait_for_selector("body[data-ready='1']")
        page.keyboard.press(key)
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert f"/case/{i + 1}" in page.url, page.url


def test_two_readers_with_the_keyboard(browser_oracle, server, tmp_path):
    chromium, sync_playwright = browser_oracle
    url = server["url"]
    shots = Path(os.environ.get("VFA_REVIEW_SCREENSHOTS") or tmp_path)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        alice = _login(browser, url, "alice", server["secrets"]["alice"])
        assert alice.locator("#worklist tbody tr").count() == 12
        alice.select_option("select[name=sort]", "p")
        with alice.expect_navigation():
            alice.click("form.filters button")
        assert alice.locator("#worklist tbody tr td").first.inner_text() == "12"
        alice.goto(f"{url}/worklist")
        _read_cases(alice, ALICE)
        # case 1 again: the heatmap toggles with h, the outlines are drawn, the read is there after a reload
        alice.goto(f"{url}/case/1")
        alice.wait_for_selector("body[data-ready='1']")
        assert alice.locator("#heatmap").is_hidden()
        alice.keyboard.press("h")
        assert alice.locator("#heatmap").is_visible() and alice.inner_text("#heat-on") == "on"
        assert alice.locator("#outlines polygon").count() == 4
        fitted = alice.evaluate("document.getElementById('stage').style.transform")
        alice.keyboard.press("z")  # full resolution: scale 1
        assert "scale(1)" in alice.evaluate("document.getElementById('stage').style.transform") != fitted
        alice.screenshot(path=str(shots / "review_case.png"))
        alice.keyboard.press("h")
        assert alice.locator("#heatmap").is_hidden()
        alice.reload()
        alice.wait_for_selector("body[data-ready='1']")
        assert alice.is_checked("#frac-yes") and alice.input_value("#grade") == "2"
        # an amendment of case 2 (0 -> 1), kept as version 2
        alice.goto(f"{url}/case/2")
        alice.wait_for_selector("body[data-ready='1']")
        assert alice.is_checked("#frac-no")
        alice.keyboard.press("1")
        alice.keyboard.press("s")
        alice.wait_for_selector("body[data-saved='2']")
        # the history follows the save without a reload, and ? opens the keys in a dialog, not an alert()
        assert alice.locator("#history li").count() == 2 and alice.inner_text("#history-count") == "2"
        assert "grade 1" in alice.locator("#history li").nth(1).text_content()
        alice.on("dialog", lambda d: pytest.fail(f"native dialog: {d.message}"))
        alice.keyboard.press("?")
        assert alice.locator("#keys").is_visible() and "Genant grade" in alice.inner_text("#keys")
        alice.keyboard.press("Escape")
        assert alice.locator("#keys").is_hidden() and "/case/2" in alice.url
        alice.reload()
        assert alice.input_value("#grade") == "1" and alice.locator("#history li").count() == 2

        bob = _login(browser, url, "bob", server["secrets"]["bob"])  # blinded by his account
        assert "P(fracture)" not in bob.content() and bob.locator("#blinded").is_visible()
        codes = _codes(server["db"], "bob")  # bob reads the cases alice read, under his own codes
        for i, key in enumerate(BOB, start=1):
            bob.goto(f"{url}/case/{codes[i]}")
            bob.wait_for_selector("body[data-ready='1']")
            bob.keyboard.press(key)
            bob.keyboard.press("s")
            bob.wait_for_selector("body[data-saved='1']")
        bob.goto(f"{url}/case/{codes[1]}")
        assert bob.locator("#heatmap").count() == 0 and bob.locator("#p").count() == 0
        assert bob.input_value("#grade") == "2"

        alice.goto(f"{url}/worklist?sort=discordance")
        alice.screenshot(path=str(shots / "review_worklist.png"))
        assert "alice, bob" in alice.inner_text("#worklist") or "bob, alice" in alice.inner_text("#worklist")
        alice.goto(f"{url}/agreement")
        shown = alice.locator("#pairs tr[data-a='alice'][data-b='bob'] td.kappa").inner_text()
        agreement = json.loads(alice.request.get(f"{url}/agreement.json").text())
        assert alice.errors == [] and bob.errors == []
        browser.close()

    a = [CALLS[k] for k in ALICE]
    a[1] = (1, 1)  # the amendment
    b = [CALLS[k] for k in BOB]
    kappa = cohen_kappa_score([x[0] for x in a], [x[0] for x in b])
    assert shown.startswith(f"{kappa:.3f} (")
    pair = agreement["pairs"][0]
    assert pair["n"] == 6 and pair["fracture"]["kappa"] == pytest.approx(kappa)
    graded = [i for i in range(6) if a[i][1] is not None]
    assert pair["grade_quadratic"]["kappa"] == pytest.approx(
        cohen_kappa_score([a[i][1] for i in graded], [b[i][1] for i in graded], weights="quadratic"))
    model = pd.read_csv(server["data"]["predictions"])["predicted"][:6].tolist()
    vs = {v["reader"]: v for v in agreement["vs_model"]}
    assert vs["bob"]["fracture"]["kappa"] == pytest.approx(cohen_kappa_score([x[0] for x in b], model))

    out = tmp_path / "reads.csv"
    assert main(["review", "export", "--db", str(server["db"]), "--out", str(out)]) == 0
    reads = pd.read_csv(out)
    assert len(reads) == 12 and sorted(reads["reader"].unique()) == ["alice", "bob"]
    bob_reads = reads[reads.reader == "bob"].sort_values("image_id")
    assert bob_reads["label"].tolist() == [x[0] for x in b] and (bob_reads["blinded"] == 1).all()
    assert (shots / "review_worklist.png").stat().st_size > 1000
