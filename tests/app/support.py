"""Helpers for the vfa review tests: a small predictions set on disk, a logged-in client, a live server."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from tests.app.loadtest import free_port, start_review  # noqa: F401  (free_port: the tests' import)
from vfa.spine import LEVELS, POINTS


def write_review_set(root: Path, n: int = 12, size=(80, 48), heatmaps: bool = True, vertebrae: bool = True,
                     extra_columns: dict | None = None) -> dict:
    """images/{norm,frac}/img_NNN.png, predictions.csv (vfa evaluate's columns), heatmaps/ in vfa
    heatmap's naming, vertebrae.csv for the first images; returns their paths."""
    rng = np.random.default_rng(0)
    images = root / "images"
    rows = []
    for i in range(n):
        cls = "frac" if i % 2 else "norm"
        (images / cls).mkdir(parents=True, exist_ok=True)
        rel = f"{cls}/img_{i:03d}.png"
        Image.fromarray((rng.random(size) * 200).astype(np.uint8)).save(images / rel)
        p = round(float((i + 0.5) / n), 4)
        rows.append({"image_id": f"img_{i:03d}", "file": rel, "label": int(cls == "frac"), "raw": p,
                     "predicted": int(p >= 0.5), "split": "test" if i % 3 else "val"})
    frame = pd.DataFrame(rows)
    for k, v in (extra_columns or {}).items():
        frame[k] = v
    out = {"root": root, "images": images, "predictions": root / "predictions.csv", "n": n}
    frame.to_csv(out["predictions"], index=False)
    if heatmaps:
        hm = root / "heatmaps"
        for r in rows[: n // 2]:
            d = hm / Path(r["file"]).parent
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full(size + (3,), (255, 0, 0), np.uint8)).save(
                d / f"heatmap_{int(r['raw'] * 100):03d}_{Path(r['file']).name}")
        out["heatmaps"] = hm
    if vertebrae:
        vrows = []
        for r in rows[:3]:
            for j, lv in enumerate(LEVELS[:4]):
                y0 = 4 + j * 10
                pts = {"sup_ant": (10, y0), "sup_mid": (20, y0 + 1), "sup_post": (30, y0),
                       "inf_post": (30, y0 + 8), "inf_mid": (20, y0 + 7), "inf_ant": (10, y0 + 8)}
                v = {"file": r["file"], "level": lv, "x0": 10, "y0": y0, "x1": 30, "y1": y0 + 8,
                     "grade": j % 4, "type": "wedge" if j else "normal", "p_fracture": 0.1 * j}
                v.update({f"{p}_{a}": pts[p][k] for p in POINTS for k, a in enumerate("xy")})
                vrows.append(v)
        pd.DataFrame(vrows).to_csv(root / "vertebrae.csv", index=False)
        out["vertebrae"] = root / "vertebrae.csv"
    return out


def prepared_app(data: dict, db: Path, **settings):
    from vfa.app.serve import prepare
    from vfa.app.server import Settings, create_app

    prepare(data["predictions"], db, images=data["images"], heatmaps=data.get("heatmaps"),
            vertebrae=data.get("vertebrae"), keep_identifiers=settings.get("keep_identifiers", False))
    return create_app(db, Settings(**settings))


def add_reader(db: Path, reader: str, blinded: bool = False, role: str = "reader") -> str:
    """A reader account in `db`; returns its secret (plumbing: vfa.app.accounts itself)."""
    from vfa.app import accounts
    from vfa.app.db import open_db

    conn = open_db(db)
    try:
        return accounts.add_reader(conn, reader, role, blinded)
    finally:
        conn.close()


SECRETS: dict[tuple[str, str], str] = {}


def login(client, reader: str, blinded: bool = False, secret: str | None = None) -> str:
    """Log `client` in as `reader` (an account made on first use, blinded as asked, in the database
    the client's app serves); returns the session's CSRF token."""
    key = (str(client.app.db), reader)
    if secret is None:
        if key not in SECRETS:
            SECRETS[key] = add_reader(client.app.db, reader, blinded)
        secret = SECRETS[key]
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    resp = client.post("/login", data={"reader": reader, "secret": secret, "csrf": csrf}, follow_redirects=False)
    assert resp.status_code == 303, resp.text
    return client.get("/api/me").json()["csrf"]


def post_read(client, csrf: str, idx: int, **read):
    return client.post("/api/reads", json={"idx": idx, **read}, headers={"X-CSRF-Token": csrf})


def start_server(data: dict, db: Path, port: int, *extra: str) -> subprocess.Popen:
    """`vfa review` in a child process on loopback; returns once it answers /healthz."""
    args = ["--predictions", data["predictions"], "--images", data["images"], "--db", db, *extra]
    if data.get("heatmaps"):
        args += ["--heatmaps", data["heatmaps"]]
    return start_review(args, port)[0]
