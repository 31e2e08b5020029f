"""The two `vfa review` screenshots in docs/ (review_worklist.png, review_case.png), taken with the
Debian chromium that the browser tests use, on a 30-image phantom (`vfa synth`). Without a trained
model here, P(fracture) is made up from the phantom's truth (fractured images high, two misses), the
outlines and grades are the phantom's vertebrae.csv, and the heatmap is a stand-in overlay (a red
tint over the truly fractured bodies) so that the toggle shows; in use they come from `vfa
evaluate` / `vfa heatmap`. Two readers' reads are posted through the API first.

    .venv/bin/python docs/make_review_screenshots.py [--out docs]
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/app/loadtest.py: start_review, Client
from tests.app.loadtest import Client, start_review  # noqa: E402


def make_set(tmp: Path) -> Path:
    subprocess.run([sys.executable, "-m", "vfa.cli", "synth", "--out", str(tmp / "ph"), "--n", "30", "--size",
                    "600x360", "--prevalence", "0.4", "--seed", "3", "--force"], check=True, stdout=subprocess.DEVNULL)
    manifest = pd.read_csv(tmp / "ph" / "manifest.csv")
    verts = pd.read_csv(tmp / "ph" / "vertebrae.csv")
    rng = np.random.default_rng(1)
    frac = manifest["label"].astype(str).isin(["1", "frac"]).to_numpy()
    p = np.where(frac, rng.uniform(0.55, 0.98, len(frac)), rng.uniform(0.02, 0.45, len(frac)))
    p[np.flatnonzero(frac)[:1]] = 0.31  # a miss
    col = "path" if "path" in manifest else "filename"
    pd.DataFrame({"image_id": [Path(f).stem for f in manifest[col]], "file": manifest[col], "label": frac.astype(int),
                  "raw": p.round(4), "split": manifest["split"]}).to_csv(tmp / "predictions.csv", index=False)
    for f in manifest[col]:  # stand-in overlays: the image with its fractured bodies tinted
        gray = np.asarray(Image.open(tmp / "ph" / f).convert("RGB"), dtype=np.float32)
        heat = gray.copy()
        for v in verts[(verts["filename"] == f) & (verts["grade"] > 0)].itertuples():
            y0, y1, x0, x1 = int(v.y0), int(v.y1), int(v.x0), int(v.x1)
            heat[y0:y1, x0:x1] = 0.5 * heat[y0:y1, x0:x1] + 0.5 * np.array([255, 40, 0])
        out = tmp / "hm" / Path(f).parent / f"heatmap_050_{Path(f).name}"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(heat.astype(np.uint8)).save(out)
    return tmp / "predictions.csv"


def make_one(db: Path, name: str) -> str:
    from vfa.app import accounts
    from vfa.app.db import open_db

    conn = open_db(db)
    try:
        return accounts.add_reader(conn, name)
    finally:
        conn.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs")
    out = Path(ap.parse_args().out)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pred = make_set(tmp)
        secrets = {name: make_one(tmp / "r.sqlite", name) for name in ("alice", "bob")}
        proc, port = start_review(["--predictions", pred, "--images", tmp / "ph", "--heatmaps", tmp / "hm",
                                   "--vertebrae", tmp / "ph" / "vertebrae.csv", "--db", tmp / "r.sqlite"], output=False)
        try:
            frame = pd.read_csv(pred)
            for reader, flip in (("alice", 7), ("bob", 5)):
                c = Client("127.0.0.1", port)
                csrf = c.login(reader, secrets[reader])
                for i, row in enumerate(frame.head(14).itertuples(), start=1):
                    call = int(row.label) if i % flip else 1 - int(row.label)
                    c.request("POST", "/api/reads", json.dumps({"idx": i, "fracture": call, "grade": 2 * call}).encode(),
                              {"Content-Type": "application/json", "X-CSRF-Token": csrf})
            case = int(frame.index[frame["label"] == 1][1]) + 1
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
                page = browser.new_context(viewport={"width": 1280, "height": 720}).new_page()
                page.goto(f"http://127.0.0.1:{port}/login")
                page.fill("#reader-name", "alice")
                page.fill("#secret", secrets["alice"])
                with page.expect_navigation():
                    page.click("#start")
                page.goto(f"http://127.0.0.1:{port}/worklist?sort=discordance&per_page=16")
                page.screenshot(path=str(out / "review_worklist.png"))
                page.goto(f"http://127.0.0.1:{port}/case/{case}")
                page.wait_for_selector("body[data-ready='1']")
                page.keyboard.press("h")
                page.keyboard.press("y")
                page.keyboard.press("2")
                page.screenshot(path=str(out / "review_case.png"))
                browser.close()
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"wrote {out / 'review_worklist.png'} and {out / 'review_case.png'}")


if __name__ == "__main__":
    main()
