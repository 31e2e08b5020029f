"""`vfa node` latency and throughput against Debian's Orthanc (issue 28), one model per run:

  python -m tests.node.bench_node --preset cpu-demo --n 20 --flood 200

  * start-up: process start -> listening (torch import + the model loaded once)
  * latency: N single-image studies sent one at a time by DCMTK's storescu; per study, seconds from
    its last instance's arrival to its SR + SC accepted by Orthanc (the queue's sent_at -
    last_instance_at; includes the quiet time, printed beside it)
  * throughput: a flood of F single-image studies from two storescu processes at once; studies per
    minute from the first arrival to the last study sent, none lost, and the node's RSS over time
The model has random weights (timing does not depend on them); the studies are phantom images with
fresh UIDs. Prints one JSON object (and a Markdown row) to paste into BENCHMARKS.md / docs/node.md."""
from __future__ import annotations

import argparse
import json
import platform
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from tests import oracles
from tests.node.support import Node, Orthanc, wait_for

SIZES = {"tiny": ["data.size=[64,40]", "model.backbone=resnet18", "model.head=[16]"], "cpu-demo": [], "seed": []}


def checkpoint(preset: str, path: Path) -> Path:
    import torch

    from vfa import checkpoint as ckpt
    from vfa import config as config_mod
    from vfa.models.network import build_from_config

    cfg = config_mod.resolve("cpu-demo" if preset == "tiny" else preset,
                             overrides=config_mod.parse_set(SIZES[preset]))
    torch.manual_seed(0)
    return ckpt.save(path, build_from_config(cfg.model), cfg, force=True)


def studies(source: Path, out: Path, n: int, tag: str) -> list[Path]:
    """`n` copies of `source`, each its own study (fresh Study/Series/SOP UIDs and patient)."""
    import pydicom
    from pydicom.uid import generate_uid

    out.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(source)
    paths = []
    for i in range(n):
        ds.StudyInstanceUID = generate_uid(entropy_srcs=[tag, str(i), "study"])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[tag, str(i), "series"])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[tag, str(i)])
        ds.PatientID = f"PHANTOM-{tag}-{i:05d}"
        paths.append(out / f"{tag}{i:05d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def queue_rows(node: Node) -> list[tuple]:
    with sqlite3.connect(node.store / "queue.sqlite", timeout=30) as db:
        return db.execute("SELECT state, first_at, last_instance_at, sent_at FROM studies").fetchall()


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def storescu(aet: str, port: int, files: list[Path]) -> None:
    subprocess.run([oracles.dcmtk("storescu"), "-aet", aet, "127.0.0.1", str(port), *map(str, files)],
                   check=True, capture_output=True, timeout=3600)


def latency(node: Node, files: list[Path]) -> list[float]:
    for i, f in enumerate(files):
        storescu("STORESCU", node.port, [f])
        wait_for(lambda: sum(r[0] == "sent" for r in queue_rows(node)) == i + 1, 600, "a study sent")
    return [r[3] - r[2] for r in queue_rows(node) if r[0] == "sent"]


def flood(node: Node, files: list[Path], done_before: int) -> dict:
    halves = [files[0::2], files[1::2]]
    rss, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            rss.append(rss_mib(node.proc.p.pid))
            time.sleep(1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    senders = [threading.Thread(target=storescu, args=(f"SENDER{k}", node.port, half)) for k, half in enumerate(halves)]
    t0 = time.time()
    for s in senders:
        s.start()
    for s in senders:
        s.join()
    wait_for(lambda: sum(r[0] == "sent" for r in queue_rows(node)) == done_before + len(files), 7200, "the flood")
    stop.set()
    rows = [r for r in queue_rows(node) if r[1] >= t0 - 1]
    span = max(r[3] for r in rows) - min(r[1] for r in rows)
    lat = [r[3] - r[2] for r in rows]  # under load: queueing behind the other studies included
    return {"studies": len(rows), "sent": sum(r[0] == "sent" for r in rows), "seconds": round(span, 1),
            "studies_per_min": round(60 * len(rows) / span, 1),
            "latency_p50_p95_s": [round(float(np.percentile(lat, q)), 1) for q in (50, 95)],
            "rss_mib_first_last_max": [round(rss[0]), round(rss[-1]), round(max(rss))] if rss else None}


def run(args) -> dict:
    from vfa.phantom.synth import PhantomConfig, synthesize

    tmp = Path(tempfile.mkdtemp(prefix="vfa-node-bench-"))
    size = (160, 96) if args.preset == "tiny" else (1024, 614) if args.preset == "seed" else (640, 384)
    synthesize(tmp / "ph", PhantomConfig(n=1, size=size, seed=3, workers=1, splits=(0.0, 0.0, 1.0),
                                         format="dicom"), progress=False, force=True)
    source = next((tmp / "ph").rglob("*.dcm"))
    ckpt = checkpoint(args.preset, tmp / "m.ckpt")
    node = Node(tmp, ckpt, "X@127.0.0.1:1", quiet_time=args.quiet_time)
    orthanc = Orthanc(tmp, node.port)
    node.args[node.args.index("--send-to") + 1] = orthanc.aet
    try:
        t0 = time.time()
        node.start()
        startup = time.time() - t0
        lat = latency(node, studies(source, tmp / "lat", args.n, "lat"))
        result = {"preset": args.preset, "image": list(size), "quiet_time_s": args.quiet_time,
                  "startup_s": round(startup, 1), "n": len(lat),
                  "latency_p50_s": round(float(np.percentile(lat, 50)), 2),
                  "latency_p95_s": round(float(np.percentile(lat, 95)), 2)}
        if args.flood:
            result["flood"] = flood(node, studies(source, tmp / "flood", args.flood, "flood"), len(lat))
        result["orthanc_instances"] = len(orthanc.get("/instances"))
        node.stop()
    finally:
        orthanc.stop()
        node.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    result["machine"] = f"{platform.processor() or platform.machine()}, {_cpus()} CPUs, {platform.platform()}"
    return result


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(SIZES), default="cpu-demo")
    p.add_argument("--n", type=int, default=20, help="studies for the latency, sent one at a time")
    p.add_argument("--flood", type=int, default=0, help="studies in the flood from two senders (0: none)")
    p.add_argument("--quiet-time", type=float, default=2.0)
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, queue, Orthanc's storage)")
    print(json.dumps(run(p.parse_args()), indent=1))


if __name__ == "__main__":
    main()
