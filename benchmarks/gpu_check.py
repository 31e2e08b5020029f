"""GPU check, for when a GPU is lent (benchmarks/gpu_check.sh runs it; installs nothing).

Trains the seed preset (Inception-ResNet-v2, 600x360) for 2 epochs in bf16 on a phantom, then
predicts N files with each backend on the GPU: images/s of the whole streamed job and of the
model alone (a resident batch, so the data pipeline's share shows), peak GPU memory, and
max |delta p| against fp32 eager. Prints one JSON line per row.
"""
import json
import os
import sys
import time
from pathlib import Path

import torch

import vfa
from vfa import config as config_mod
from vfa.inference.archive import predict_to_file
from vfa.inference.backends import with_backend
from vfa.models.loading import load_model


def emit(**row):
    print(json.dumps(row), flush=True)


def model_only(ckpt, backend, batch=256, repeats=5):
    model = load_model(ckpt, "cuda")
    run = with_backend(model, backend, n_images=10**6)
    x = torch.rand(batch, 3, 600, 360, device="cuda")
    with torch.inference_mode():
        run(x)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            run(x)
        torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - t0)


def main(out: Path, n_files: int) -> int:
    if not torch.cuda.is_available():
        print("no CUDA GPU visible: nothing to check", file=sys.stderr)
        return 2
    emit(gpu=torch.cuda.get_device_name(0), torch=torch.__version__, cpus=os.cpu_count())
    phantom = out / "phantom"
    if not (phantom / "manifest.csv").exists():
        from vfa.phantom.synth import PhantomConfig

        vfa.synthesize(phantom, PhantomConfig(n=400, prevalence=0.5, seed=0), progress=False, force=True)
    cfg = config_mod.resolve("seed", overrides={
        "data": {"train": str(phantom / "train"), "val": str(phantom / "val"), "augment_on": "device",
                 "num_workers": min(8, os.cpu_count() or 1)},
        "trainer": {"precision": "bf16-mixed", "accelerator": "gpu", "devices": 1}, "optim": {"epochs": 2}})
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run = Path(vfa.train(cfg, out / "run", force=True))
    n_train = sum(1 for _ in (phantom / "train").rglob("*.png"))
    emit(row="train seed preset, bf16, augment_on=device, 2 epochs", seconds=round(time.perf_counter() - t0, 1),
         train_img_per_s_incl_val_and_startup=round(2 * n_train / (time.perf_counter() - t0), 1),
         peak_gpu_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2))
    ckpt = run / "checkpoints" / "last.ckpt"
    files = out / "files"  # N files: the phantom's images linked over and over
    if not files.exists():
        src = sorted(phantom.rglob("*.png"))
        files.mkdir(parents=True)
        for i in range(n_files):
            (files / f"{i:07d}.png").symlink_to(src[i % len(src)].resolve())
    import pandas as pd

    ref = None
    for backend in ("torch", "torch-bf16", "compile", "auto"):
        torch.cuda.reset_peak_memory_stats()
        s = predict_to_file(ckpt, [files], out / f"p_{backend}.csv", force=True, backend=backend, device="cuda",
                            batch_size=128)
        p = pd.read_csv(out / f"p_{backend}.csv")["raw"].to_numpy()
        ref = p if backend == "torch" else ref
        emit(row=f"predict {n_files} files, backend {backend} (ran {s.backend})", seconds=round(s.seconds, 1),
             img_per_s=round(s.now / s.seconds, 1), model_only_img_per_s=round(model_only(ckpt, s.backend), 1),
             peak_gpu_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
             max_dp_vs_fp32=float(abs(p - ref).max()))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/gpu-check"),
                  int(sys.argv[2]) if len(sys.argv) > 2 else 20000))
