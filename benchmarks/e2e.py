"""`make bench`, issue 29: the default `vfa predict` against the notebook's whole Keras job, whole
processes, in one run on one machine, for 48 and for 1,000 seed-size files (1024x614 phantom PNGs).

Two models, both Inception-ResNet-v2 at 600x360 with random weights:
  * imported: the notebook-architecture .h5 that `keras_e2e.py save` writes, through `vfa import-keras`
    (preset keras215: it declares exactness, so the default runs fp32, on the engine import-keras prepared)
  * native: a vfa checkpoint of the seed preset (the default's `auto` may run bf16 or compile, verified
    against fp32 on the first batch)

Per size it prints the Keras job, each model's default, max |dP| of the default against fp32, and
(48 files) an ensemble of 3 and TTA x5. fp32 is torch eager (`--backend torch`) at 48 files; at
1,000 it is onnxruntime fp32 (`--backend onnxruntime`, an export checked against torch to 1e-5),
because eager fp32 would take longer than the rest of the bench. The start-up breakdown comes
from the job record's `timings` (vfa.inference.archive.Phases) and bare-import processes.
Writes its section between the e2e markers of BENCHMARKS.md. Phantom data, not patient data.
"""
import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- e2e:begin -->", "<!-- e2e:end -->"
PHASES = ("load model", "check files", "engine set-up", "first batch", "other batches", "write")


def files(root: Path, n: int) -> Path:
    """n seed-size phantom PNGs in DIR/norm and DIR/frac (as flow_from_directory wants)."""
    from vfa.phantom.synth import PhantomConfig, synthesize

    out = root / f"files{n}"
    if (out / "done").exists():
        return out
    synthesize(root / f"phantom{n}", PhantomConfig(n=n, size=(1024, 614), prevalence=0.5, seed=0), progress=False,
               force=True)
    for cls in ("norm", "frac"):
        (out / cls).mkdir(parents=True, exist_ok=True)
        for f in (root / f"phantom{n}").glob(f"*/{cls}/*.png"):
            shutil.move(f, out / cls / f.name)
    shutil.rmtree(root / f"phantom{n}")
    (out / "done").write_text("")
    return out


def models(root: Path, keras_python: str, env: dict) -> dict:
    """{"imported": .ckpt from the .h5 (its fp32 engine prepared), "native": a seed-preset .ckpt}."""
    from archive import wall

    h5, imported, native = root / "seed.h5", root / "imported.ckpt", root / "native.ckpt"
    if not h5.exists():
        wall([keras_python, str(ROOT / "benchmarks" / "keras_e2e.py"), "save", str(h5)])
    wall([vfa_exe(), "import-keras", str(h5), "--out", str(imported), "--force"], env=env)
    if not native.exists():
        import torch

        from vfa import checkpoint, config as config_mod
        from vfa.models.network import build_from_config

        cfg = config_mod.resolve("seed")
        torch.manual_seed(0)
        checkpoint.save(native, build_from_config(cfg.model), cfg, force=True)
    return {"h5": h5, "imported": imported, "native": native}


def vfa_exe() -> str:
    return str(Path(sys.executable).with_name("vfa"))


def predict(model, data: Path, out: Path, env: dict, *extra) -> dict:
    """One whole `vfa predict` process: {"s", "p" (by file), "backend", "timings", "checks"}."""
    from archive import wall

    models_ = sum((["--model", str(m)] for m in (model if isinstance(model, list) else [model])), [])
    s, _, _ = wall([vfa_exe(), "predict", *models_, str(data), "--out", str(out), "--force", *extra], env=env)
    frame = __import__("pandas").read_csv(out).sort_values("file")
    job = json.loads(out.with_name(f".{out.name}.vfa-job.json").read_text())
    col = "tta_mean" if "tta_mean" in frame else "raw"
    return {"s": s, "p": frame[col].to_numpy(), "backend": job["backend"], "timings": job.get("timings", {}),
            "checks": job.get("backend_checks", [])}


def keras_job(keras_python: str, h5: Path, data: Path, runs: int) -> float:
    from archive import wall

    times = [wall([keras_python, str(ROOT / "benchmarks" / "keras_e2e.py"), "predict", str(h5), str(data)])[0]
             for _ in range(runs)]
    print(f"keras {data.name}: {[round(t, 1) for t in times]}", flush=True)
    return min(times)


def size_rows(n: int, root: Path, m: dict, keras_python: str, env: dict) -> tuple[list, dict]:
    """The rows for one job size, and the default runs' records (for the start-up breakdown)."""
    data = files(root, n)
    keras_s = keras_job(keras_python, m["h5"], data, 2 if n <= 100 else 1)
    rows, runs = [(f"Keras, the notebook's job (load .h5, flow_from_directory, predict), fp32", keras_s, "")], {}
    ref_backend = "torch" if n <= 100 else "onnxruntime"
    for kind in ("imported", "native"):
        ref = predict(m[kind], data, root / f"ref_{kind}{n}.csv", env, "--backend", ref_backend)
        got = predict(m[kind], data, root / f"default_{kind}{n}.csv", env)
        runs[kind] = got
        dp = float(np.abs(got["p"] - ref["p"]).max())
        rows.append((f"vfa predict, defaults, {kind} model", got["s"],
                     f"ran {got['backend']}; max dP vs fp32 ({ref_backend}) {dp:.1e}"))
        if n <= 100:
            rows.append((f"vfa predict --backend torch (fp32 eager NCHW), {kind} model", ref["s"], ""))
    if n <= 100:
        members = [shutil.copy(m["imported"], root / f"member{i}.ckpt") for i in range(3)]
        ens = predict(members, data, root / f"ens{n}.csv", env)
        rows.append(("vfa predict, defaults, ensemble of 3 (imported model x3)", ens["s"], f"ran {ens['backend']}"))
        tta = predict(m["imported"], data, root / f"tta{n}.csv", env, "--tta", "5")
        rows.append(("vfa predict, defaults, --tta 5, imported model", tta["s"], f"ran {tta['backend']}; 6 passes"))
    return [(name, s, keras_s / s, note) for name, s, note in rows], runs


def import_walls() -> list[tuple[str, float]]:
    from archive import wall

    py = sys.executable
    out = []
    for what, code in (("python -c pass", "pass"), ("import torch", "import torch"),
                       ("import timm (torchvision, torch._dynamo)", "import timm"),
                       ("import vfa.inference.run (the predict stack)", "import vfa.inference.run"),
                       ("import onnxruntime", "import onnxruntime")):
        out.append((what, min(wall([py, "-c", code])[0] for _ in range(2))))
    return out


def breakdown(runs: dict) -> list[str]:
    lines = ["| phase | " + " | ".join(f"{k} model" for k in runs) + " |", "|---|" + "---:|" * len(runs)]
    for phase in PHASES:
        lines.append(f"| {phase} | " + " | ".join(f"{r['timings'].get(phase, 0):.2f} s" for r in runs.values()) + " |")
    start = [r["s"] - sum(r["timings"].values()) for r in runs.values()]
    lines.append("| process start-up and exit (interpreter, imports, arguments): whole wall minus the above | "
                 + " | ".join(f"{s:.2f} s" for s in start) + " |")
    lines.append("| whole process | " + " | ".join(f"{r['s']:.2f} s" for r in runs.values()) + " |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keras-python", default=str(ROOT / ".venv-keras" / "bin" / "python"))
    ap.add_argument("--data", default=str(ROOT / "runs" / "bench-e2e"))
    ap.add_argument("--sizes", default="48,1000", help="job sizes in files, comma-separated")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = ap.parse_args()
    if not Path(args.keras_python).exists():
        raise SystemExit(f"need {args.keras_python} (make .venv-keras/.vfa-keras-installed)")
    root = Path(args.data)
    root.mkdir(parents=True, exist_ok=True)
    cache = root / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # cold: the import prepares the engine, compile starts empty
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "VFA_CACHE": str(cache),
           "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor")}
    t0 = time.perf_counter()
    m = models(root, args.keras_python, env)
    tables, first = {}, None
    for n in (int(s) for s in args.sizes.split(",")):
        tables[n], runs = size_rows(n, root, m, args.keras_python, env)
        first = first or runs
        for row in tables[n]:
            print(f"{n} files: {row[0]}: {row[1]:.1f} s, {row[2]:.2f}x; {row[3]}", flush=True)
    write(args.out, tables, breakdown(first), import_walls(), time.perf_counter() - t0)
    return 0


def write(path, tables, phases, imports, total):
    from archive import write_section
    from bench import machine

    lines = [BEGIN, "## The default `vfa predict` against the notebook's Keras job (benchmarks/e2e.py, issue 29)", "",
             f"Measured {time.strftime('%Y-%m-%d')} on {machine()}, in one run of {total / 60:.0f} min. Whole "
             "processes, wall time; seed-size phantom PNGs (1024x614 -> 600x360); Inception-ResNet-v2 with random "
             "weights. Phantom data, not patient data. The ratio is Keras' seconds over vfa's.", ""]
    for n, rows in tables.items():
        lines += [f"**{n:,} files**", "", "| job | seconds | vs Keras job | notes |", "|---|---:|---:|---|"]
        lines += [f"| {name} | {s:.1f} | {ratio:.2f}x | {note} |" for name, s, ratio, note in rows]
        lines.append("")
    lines += [f"Where a {min(tables):,}-file default run spends its time (the job record's `timings`):", "", *phases, "",
              "Bare imports, whole processes (the faster of two):", "", "| process | seconds |", "|---|---:|"]
    lines += [f"| `{what}` | {s:.2f} |" for what, s in imports]
    lines += ["", END]
    write_section(path, BEGIN, END, lines)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
