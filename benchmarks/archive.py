"""Archive-scale inference against the notebook, end to end (issue 15), in one run on one machine.

  * the whole `vfa predict` process on 48 seed-size files (1024x614 phantom PNGs; the model
    imported from a notebook-architecture .h5), per backend, against the whole Keras job on the
    same files (`keras_e2e.py`: load the .h5, flow_from_directory, predict); cold and warm caches
  * an ensemble of 3 members against 1 member on the same job
  * streaming: N small phantom-like files (default 100,000) through a small model: images/s and
    the peak RSS of the main process, at N/10 and N files (flat memory: the two peaks match)

Writes its table between the archive markers of BENCHMARKS.md. Ratios only mean something
within one run.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- archive:begin -->", "<!-- archive:end -->"
BACKENDS = ("auto", "torch", "torch-bf16", "compile", "onnxruntime", "onnxruntime-int8", "openvino")


def wall(cmd, env=None, rss=False):
    """(seconds, peak RSS MiB of the process itself or None, result) of a whole child process."""
    import tempfile

    t0 = time.perf_counter()
    # output to files, not pipes: a progress bar would fill a pipe nobody reads while RSS is polled
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, text=True, env=env, cwd=ROOT)
        peak = 0
        while rss and proc.poll() is None:
            try:
                for line in open(f"/proc/{proc.pid}/status"):
                    if line.startswith("VmRSS"):
                        peak = max(peak, int(line.split()[1]) // 1024)
            except OSError:
                pass
            time.sleep(0.2)
        proc.wait()
        seconds = time.perf_counter() - t0
        fo.seek(0), fe.seek(0)
        out, err = fo.read(), fe.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd[:4]))}... failed: {err.strip().splitlines()[-1:]}")
    return seconds, (peak or None), out


def seed_files(root: Path) -> Path:
    """48 seed-size phantom PNGs in DIR/norm and DIR/frac (as flow_from_directory wants)."""
    files = root / "e2e"
    if (files / "frac").is_dir():
        return files
    from vfa.phantom.synth import PhantomConfig, synthesize

    synthesize(root / "phantom", PhantomConfig(n=48, size=(1024, 614), prevalence=0.5, seed=0), progress=False,
               force=True)
    for cls in ("norm", "frac"):
        (files / cls).mkdir(parents=True, exist_ok=True)
        for f in (root / "phantom").glob(f"*/{cls}/*.png"):
            shutil.copy(f, files / cls / f.name)
    return files


def small_files(root: Path, n: int) -> Path:
    """n small gray PNGs (96x56), 1,000 per folder."""
    from PIL import Image

    out = root / f"stream{n}"
    if (out / "done").exists():
        return out
    rng = np.random.default_rng(0)
    base = (rng.random((56, 96)) * 200).astype(np.uint8)
    for i in range(n):
        d = out / f"{i // 1000:04d}"
        if i % 1000 == 0:
            d.mkdir(parents=True, exist_ok=True)
        img = base.copy()
        img[i % 56, :] = i % 251  # distinct content per file
        Image.fromarray(img).save(d / f"s{i:06d}.png", compress_level=1)
    (out / "done").write_text("")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keras-python", default=str(ROOT / ".venv-keras" / "bin" / "python"))
    ap.add_argument("--data", default=str(ROOT / "runs" / "bench-archive"))
    ap.add_argument("--stream", type=int, default=100_000, help="files in the streaming row (0: skip)")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = ap.parse_args()
    root = Path(args.data)
    root.mkdir(parents=True, exist_ok=True)
    cache = root / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "VFA_CACHE": str(cache),
           "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor")}
    vfa = [str(Path(sys.executable).with_name("vfa"))]
    files = seed_files(root)
    rows = []
    h5, ckpt = root / "seed.h5", root / "seed.ckpt"
    keras_s = None
    if Path(args.keras_python).exists():
        if not h5.exists():
            wall([args.keras_python, str(ROOT / "benchmarks" / "keras_e2e.py"), "save", str(h5)])
        runs = [wall([args.keras_python, str(ROOT / "benchmarks" / "keras_e2e.py"), "predict", str(h5), str(files)])[0]
                for _ in range(2)]
        keras_s = min(runs)
        rows.append(("Keras, the notebook's job (load .h5, flow_from_directory, predict), fp32", keras_s, ""))
        print(f"keras: {runs}", flush=True)
        if not ckpt.exists():
            wall(vfa + ["import-keras", str(h5), "--out", str(ckpt)])
    else:
        from tests.helpers import make_checkpoint  # noqa: F401  (no Keras: a seed-preset checkpoint instead)
        raise SystemExit(f"need {args.keras_python} (make .venv-keras/.vfa-keras-installed)")
    ref = None
    for b in args.backends.split(","):
        for attempt in ("cold", "warm") if b in ("compile", "onnxruntime", "onnxruntime-int8", "openvino") else ("",):
            out = root / f"p_{b}.csv"
            s, _, text = wall(vfa + ["predict", "--model", str(ckpt), str(files), "--out", str(out), "--force",
                                     "--backend", b], env=env)
            p = __import__("pandas").read_csv(out).sort_values("file")["raw"].to_numpy()
            ref = p if b == "torch" else ref
            chosen = text.split("backend ")[-1].split(",")[0]
            rows.append((f"vfa predict, backend {b}" + (f" ({attempt} cache)" if attempt else ""), s,
                         f"ran {chosen}" if b == "auto" else "", p))
            print(rows[-1][:3], flush=True)
    rows = [r if len(r) == 3 else (r[0], r[1], "; ".join(filter(None, [r[2], f"max dp vs fp32 "
                                                                     f"{np.abs(r[3] - ref).max():.1e}"])))
            for r in rows]
    # ensemble overhead: 3 members vs 1, same job, backend auto
    members = [shutil.copy(ckpt, root / f"m{i}.ckpt") for i in range(3)]
    one = wall(vfa + ["predict", "--model", members[0], str(files), "--out", str(root / "e1.csv"), "--force"],
               env=env)[0]
    three = wall(vfa + ["predict", *sum((["--model", m] for m in members), []), str(files), "--out",
                        str(root / "e3.csv"), "--force"], env=env)[0]
    ens_note = f"3 members {three:.1f} s vs 1 member {one:.1f} s: {three / one:.2f}x the time (decoded once)"
    print(ens_note, flush=True)
    stream = []
    if args.stream:
        from tests.helpers import make_checkpoint

        small = make_checkpoint(root / "small.ckpt")
        for n in (args.stream // 10, args.stream):
            data = small_files(root, n)
            s, peak, _ = wall(vfa + ["predict", "--model", str(small), str(data), "--out", str(root / f"s{n}.csv"),
                                     "--force", "--batch-size", "64"], env=env, rss=True)
            stream.append((n, s, peak))
            print(stream[-1], flush=True)
    write(args.out, rows, keras_s, ens_note, stream)
    return 0


def write(path, rows, keras_s, ens_note, stream):
    from bench import machine  # benchmarks/bench.py

    lines = [BEGIN, "## Archive inference, end to end (benchmarks/archive.py)", "",
             f"Measured {time.strftime('%Y-%m-%d')} on {machine()}. Whole processes, wall time, "
             "48 seed-size phantom PNGs (1024x614 -> 600x360), batch 16, model imported from a "
             "notebook-architecture .h5 with random weights. Phantom data, not patient data.", "",
             "| job | seconds | vs Keras job | notes |", "|---|---:|---:|---|"]
    for name, s, note in rows:
        lines.append(f"| {name} | {s:.1f} | {keras_s / s:.2f}x | {note} |")
    lines += ["", f"Ensemble: {ens_note}.", ""]
    if stream:
        lines += ["Streaming (resnet18 at 64x40, 96x56 PNGs in folders of 1,000, batch 64, default workers):", "",
                  "| files | seconds | images/s | peak RSS of the main process |", "|---:|---:|---:|---:|"]
        lines += [f"| {n:,} | {s:.0f} | {n / s:.0f} | {peak} MiB |" for n, s, peak in stream]
        lines.append("")
    lines.append(END)
    write_section(path, BEGIN, END, lines)


def write_section(path, begin: str, end: str, lines: list[str]) -> None:
    """Replace the text between `begin` and `end` in `path` (the lines carry both markers), or append it."""
    text = Path(path).read_text() if Path(path).exists() else ""
    block = "\n".join(lines)
    if begin in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    Path(path).write_text(text)
    print(block)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
