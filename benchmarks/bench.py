"""`make bench`: vfa against the Keras baseline at the seed preset (Inception-ResNet-v2, 600x360, batch 12),
in one run on one machine, as images/s and ratios; writes BENCHMARKS.md.

Every measurement runs in its own process (fresh allocator, its own peak RSS, no compiled state
shared between rows). Model rows use random weights and a fixed random batch: speed does not
depend on the weights. Each row: one untimed warm-up call (for `compile`: the compile, reported
separately), then the mean of --repeats timed calls.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH, SIZE = 12, (600, 360)
TINY = bool(os.environ.get("VFA_BENCH_TINY"))  # smoke test of the script itself: a small CNN at 96x56
if TINY:
    SIZE = (96, 56)
INFER = ("torch", "torch-bf16", "compile", "onnxruntime", "onnxruntime-int8")


def _emit(**row):
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(row), flush=True)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _model(train: bool = False):
    import torch

    from vfa import config as config_mod
    from vfa.models.network import build_from_config

    cfg = config_mod.resolve("seed2019", overrides={"data": {"size": SIZE}, "model": {
        "backbone": "vfa_cnn_small", "head": [16]}} if TINY else None)
    torch.manual_seed(0)
    model = build_from_config(cfg.model)
    model.config, model.temperature, model.threshold = cfg, 1.0, 0.5
    x = torch.rand(BATCH, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    return model.train(train), x


def _timed(fn, repeats: int) -> tuple[float, float]:
    """(seconds of the warm-up call, mean seconds of the timed calls)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return first, (time.perf_counter() - t0) / repeats


def worker_infer(backend: str, repeats: int, tmp: Path, data: Path | None, tag: str = "") -> None:
    import numpy as np
    import torch

    from vfa.inference.backends import with_backend

    model, x = _model()
    t0 = time.perf_counter()
    # onnxruntime: export + verification happen here; int8 also calibrates (on the bench batch)
    runner = with_backend(model, backend, calibration=x)
    setup = time.perf_counter() - t0
    with torch.inference_mode():
        first, sec = _timed(lambda: runner(x), repeats)
        p = torch.sigmoid(runner(x).float()).numpy()
    ref_file = tmp / "ref_probs.npy"
    if backend == "torch":
        np.save(ref_file, p)
    dp = float(np.abs(p - np.load(ref_file)).max()) if ref_file.is_file() else None
    row = dict(name=f"vfa_{backend}_infer{tag}", img_per_s=round(BATCH / sec, 3), first_call_s=round(first, 1),
               setup_s=round(setup, 1), max_abs_dp_vs_fp32=dp, p_range=[float(p.min()), float(p.max())])
    if data is not None:  # streaming over real images: resident memory after each batch
        from torch.utils.data import DataLoader

        from vfa.data.dataset import create_dataset
        from vfa.inference.predict import predict_loader

        paths = sorted(str(f) for f in data.rglob("*.png"))
        rss = []

        def tracked(loader):
            for item in loader:
                yield item
                rss.append(_rss_mb())

        predict_loader(runner, tracked(DataLoader(create_dataset(model, paths), batch_size=BATCH)))
        row.update(stream_images=len(paths), stream_rss_mb=[round(r) for r in rss],
                   stream_rss_growth_mb=round(rss[-1] - rss[1], 1) if len(rss) > 2 else None)
    _emit(**row)


def worker_peak(repeats: int) -> None:
    """The ceiling: dense GEMM GFLOP/s on all threads (bf16, fp32), and the model's forward FLOPs per
    image. Convolutions run as GEMM-like oneDNN kernels in both frameworks, so no pipeline can beat
    (model FLOPs x img/s) = GEMM peak for long."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    n, peaks = 2048, {}
    for tag, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        _, sec = _timed(lambda: torch.mm(a, b), 5 * repeats)
        peaks[f"gemm_{tag}_gflops"] = round(2 * n ** 3 / sec / 1e9, 1)
    # one large 3x3 convolution, bf16 channels_last: the best case of the kernels IRv2 is made of
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    xc = torch.rand(BATCH, 256, 75, 45).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, sec = _timed(lambda: conv(xc), repeats)
    peaks["conv_bf16_gflops"] = round(2 * BATCH * 256 * 256 * 9 * 75 * 45 / sec / 1e9, 1)
    model, x = _model()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x[:1])
    _emit(name="peak", img_per_s=None, model_gflops=round(counter.get_total_flops() / 1e9, 2), **peaks)


def worker_batch_augment(repeats: int) -> None:
    """data.augment_on=device: the seed preset on whole gray batches (here on the CPU's threads)."""
    import torch

    from vfa.data.augment import Augment

    augment, gen = Augment("seed"), torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, 1, *SIZE)
    _, sec = _timed(lambda: augment(x, gen, channels=3), repeats)
    _emit(name="vfa_data_augment_batch", img_per_s=round(BATCH / sec, 3), threads=torch.get_num_threads())


def worker_train(precision: str, repeats: int, profile: bool, compile: bool = False,
                 layout: str | None = None) -> None:
    import torch
    import torch.nn.functional as F

    model, x = _model(train=True)
    if compile:  # what model.compile=true runs (vfa.train): the whole step's graph, forward + backward
        from vfa.runs import enable_compile_cache
        enable_compile_cache()
        model.compile()
    y = torch.tensor([0.0, 1.0] * (BATCH // 2))
    bf16 = precision == "bf16"
    layout = layout or ("cl" if bf16 else "nchw")  # default rows: as named in report_md.LABELS
    if layout == "cl":  # what model.channels_last=true runs (vfa.train)
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    pos_weight = torch.tensor(3.0)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y, pos_weight=pos_weight)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    first, sec = _timed(step, repeats)
    tag = {"fp32": {"cl": "_cl"}, "bf16": {"nchw": "_nchw"}}[precision].get(layout, "")
    row = dict(name=f"vfa_{precision}{tag}{'_compile' if compile else ''}_train", img_per_s=round(BATCH / sec, 3),
               first_call_s=round(first, 1))
    if profile:  # where a bf16 training step spends its time: the evidence for what limits it
        from torch.profiler import ProfilerActivity, profile as prof

        with prof(activities=[ProfilerActivity.CPU]) as p:
            step()
        events = sorted(p.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events) or 1
        row["profile_top"] = [[e.key, round(100 * e.self_cpu_time_total / total, 1)] for e in events[:8]]
    _emit(**row)


def worker_data(data: Path, n: int) -> None:
    import torch

    from vfa import config as config_mod
    from vfa.data.dataset import create_dataset
    from vfa.data.samples import load_samples

    torch.set_num_threads(1)  # per core: one process, one thread, as a DataLoader worker runs
    cfg = config_mod.resolve("seed", overrides={"data": {"size": list(SIZE)}})
    ds = create_dataset(cfg, load_samples(data), train=True)  # the seed augmentation, as training runs it
    ds[0]
    t0 = time.perf_counter()
    for i in range(n):
        ds[i % len(ds)]
    _emit(name="vfa_data_augment_1proc", img_per_s=round(n / (time.perf_counter() - t0), 3))


def run_rows(cmd: list[str], timeout: int = 900, env: dict | None = None) -> tuple[list[dict], str]:
    """JSON rows a child prints, and its error text ('' when it succeeded)."""
    print("  $", " ".join(cmd[1:]), flush=True)
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return [], f"timed out after {timeout} s"
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    err = "" if res.returncode == 0 else (res.stderr.strip().splitlines() or ["failed"])[-1][:200]
    for row in rows:
        print("   ", json.dumps(row), flush=True)
    if err:
        print("    error:", err, flush=True)
    return rows, err


def ensure_phantom(path: Path) -> Path:
    if not (path / "train" / "frac").is_dir():
        from vfa.phantom.synth import PhantomConfig, synthesize

        # the seed's input: 1024x614 8-bit PNGs, resized to 600x360 by the pipeline
        synthesize(path, PhantomConfig(n=80, size=(1024, 614), prevalence=0.5, seed=0), progress=False, force=True)
    return path


def versions(keras_python: str | None) -> dict:
    import onnxruntime
    import timm
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
           "onnxruntime": onnxruntime.__version__, "torch threads": torch.get_num_threads()}
    if keras_python and Path(keras_python).exists():
        res = subprocess.run([keras_python, "-c", "import os; os.environ['TF_CPP_MIN_LOG_LEVEL']='3'; import "
                              "tensorflow as tf, tf_keras; print(tf.__version__, tf_keras.__version__)"],
                             capture_output=True, text=True)
        if res.returncode == 0 and res.stdout.split():
            out["tensorflow"], out["tf_keras"] = res.stdout.split()[:2]
    return out


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    isa = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags)
    mem = int(open("/proc/meminfo").readline().split()[1]) / 2**20
    return f"{cpu}, {os.cpu_count()} logical cores ({isa}), {mem:.0f} GiB RAM, {platform.platform()}; no GPU"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keras-python", default=str(ROOT / ".venv-keras" / "bin" / "python"))
    ap.add_argument("--keras-script", default=str(ROOT.parent / "shared" / "bench" / "keras_seed.py"))
    ap.add_argument("--data", default=str(ROOT / "runs" / "bench-data"), help="phantom (written if missing)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backends", default=",".join(INFER))
    ap.add_argument("--no-keras", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", default=str(ROOT / "runs" / "bench-tmp"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    tmp = Path(args.tmp)
    if args.worker:
        kind, *rest = args.worker
        if kind == "infer":
            extra = rest[1] if len(rest) > 1 else ""
            worker_infer(rest[0], args.repeats, tmp, Path(args.data) if extra == "stream" else None,
                         "_warm" if extra == "warm" else "")
        elif kind == "train":
            worker_train(rest[0], max(1, args.repeats - 1), profile="profile" in rest, compile="compile" in rest,
                         layout=next((r for r in rest if r in ("cl", "nchw")), None))
        elif kind == "peak":
            worker_peak(args.repeats)
        elif kind == "batch-augment":
            worker_batch_augment(args.repeats)
        else:
            worker_data(Path(args.data) / "train", 60)
        return 0

    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "ref_probs.npy").unlink(missing_ok=True)
    data = ensure_phantom(Path(args.data))
    me = [sys.executable, __file__, "--data", str(data), "--tmp", str(tmp), "--repeats", str(args.repeats)]
    # a private, emptied cache: the first compile row is cold, the "warm" rerun shows what the cache saves
    cache = tmp / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "VFA_CACHE": str(cache), "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor")}
    rows, errors = {}, {}

    def collect(name, cmd, **kw):
        got, err = run_rows(cmd, env=env, **kw)
        rows.update({r["name"]: r for r in got})
        if err:
            errors[name] = err

    print("vfa:", flush=True)
    collect("peak", me + ["--worker", "peak"])
    for b in args.backends.split(","):
        collect(f"vfa_{b}_infer", me + ["--worker", "infer", b] + (["stream"] if b == "compile" else []))
        if b == "compile":
            collect("vfa_compile_infer_warm", me + ["--worker", "infer", b, "warm"])
    collect("vfa_fp32_train", me + ["--worker", "train", "fp32"])
    collect("vfa_fp32_cl_train", me + ["--worker", "train", "fp32", "cl"])
    collect("vfa_bf16_nchw_train", me + ["--worker", "train", "bf16", "nchw"])
    collect("vfa_bf16_train", me + ["--worker", "train", "bf16", "profile"])
    collect("vfa_bf16_compile_train", me + ["--worker", "train", "bf16", "compile"], timeout=1800)
    collect("vfa_data_augment_1proc", me + ["--worker", "data"])
    collect("vfa_data_augment_batch", me + ["--worker", "batch-augment"])
    keras = not args.no_keras and Path(args.keras_python).exists() and Path(args.keras_script).exists()
    if keras:
        print("Keras baseline:", flush=True)
        k = [args.keras_python, args.keras_script]
        collect("keras_fp32", k + ["model", "--repeats", str(args.repeats)])
        collect("keras_bf16", k + ["model", "--bf16", "--repeats", str(args.repeats)])
        collect("keras_data_augment_1proc", k + ["data", str(data / "train")])
    else:
        errors["keras"] = f"not measured: need {args.keras_python} (make $(KERAS_STAMP)) and {args.keras_script}"
    from report_md import render  # benchmarks/report_md.py: table, targets, BENCHMARKS.md

    text, table = render(rows, errors, machine(), versions(args.keras_python if keras else None), args.repeats)
    print("\n" + table)
    notes = Path(__file__).with_name("NOTES.md")  # hand-written analysis of the last reviewed run
    Path(args.out).write_text(text + ("\n" + notes.read_text() if notes.is_file() else ""))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
