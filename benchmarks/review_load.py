"""Load test of `vfa review` on loopback: N concurrent readers open cases (page + image) and post
reads for S seconds against a real server process; then the database is checked against what was
acknowledged (no lost, duplicated or gapped read). Prints one JSON line of figures.

    .venv/bin/python benchmarks/review_load.py [--clients 50] [--seconds 30] [--cases 300]

The server runs as `vfa review` in a child process on a free loopback port, on a throwaway folder
of random 512x192 PNGs (P(fracture) spread over [0, 1]); the load driver is tests/app/loadtest.py.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the load driver lives with the tests
from tests.app.loadtest import check_db, make_readers, run_load, start_review  # noqa: E402


def make_set(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        Image.fromarray((rng.random((512, 192)) * 255).astype(np.uint8)).save(root / "img" / f"{i:05d}.png")
        rows.append({"image_id": f"case{i:05d}", "file": f"img/{i:05d}.png", "raw": rng.random()})
    pd.DataFrame(rows).to_csv(root / "predictions.csv", index=False)
    return root / "predictions.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--cases", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pred = make_set(tmp, args.cases)
        db = tmp / "review.sqlite"
        secrets = make_readers(db, args.clients)  # one account per reader: logins check scrypt secrets
        proc, port = start_review(["--predictions", pred, "--db", db], output=False)
        try:
            result = run_load("127.0.0.1", port, args.cases, secrets, args.clients, args.seconds)
        finally:
            proc.terminate()
            proc.wait(30)
        check = check_db(db, result["acked"])
    errors = result.pop("errors")
    figures = {"clients": result["clients"], "seconds": result["seconds"], "requests": result["requests"],
               "requests_per_s": result["requests_per_s"], "reads_acknowledged": len(result["acked"]),
               "reads_stored": check["stored"], "lost": check["n_missing"], "duplicated": check["duplicates"],
               "version_gaps": check["gaps"], "errors": len(errors), "first_errors": errors[:5],
               "p50_ms": result["p50_ms"], "p95_ms": result["p95_ms"], "p99_ms": result["p99_ms"],
               "post_read_p95_ms": result["post_p95_ms"], "cases": args.cases}
    print(json.dumps(figures))
    if errors or check["n_missing"] or check["duplicates"] or check["gaps"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
