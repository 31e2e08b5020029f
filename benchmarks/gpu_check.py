"""GPU check, for when a GPU is lent (benchmarks/gpu_check.sh runs it; installs nothing).

Trains the seed preset (Inception-ResNet-v2, 600x360) for 2 epochs in bf16 with batch augmentation
on the GPU (data.augment_on=device) on a phantom, then the per-vertebra `vertebra` preset (1024x614)
for 2 epochs, timing every step of each second epoch: training
images/s, peak GPU memory, and the share of step time spent waiting for the data loader (the
target: >= 1,000 images/s on an H100/H200, the loader never the bottleneck). Then it
predicts N files with each backend on the GPU: images/s of the whole streamed job and of the
model alone (a resident batch, so the data pipeline's share shows), peak GPU memory, and
max |delta p| against fp32 eager; for `auto`, its own check (candidate, max |dP| on the first batch,
fallback) from the job record. Prints one JSON line per row.
"""
import json
import os
import sys
import time
from pathlib import Path

import lightning as L
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


class StepTimer(L.Callback):
    """Per step: time waiting for the loader (previous batch end -> this batch start) and the step
    itself (batch start -> batch end, synchronized); the second epoch only (no warm-up)."""

    def __init__(self):
        self.wait, self.step, self.images, self._end, self._start = [], [], 0, None, None

    @staticmethod
    def _now():
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, module):
        self._end = self._now()

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._start = self._now()
        if trainer.current_epoch == 1:
            self.wait.append(self._start - self._end)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self._end = self._now()
        if trainer.current_epoch == 1:
            self.step.append(self._end - self._start)
            self.images += len(batch[0])


# per preset: its data overrides on the GPU, and the tiny CPU stand-in of the smoke run
PRESET_CHECKS = {
    "seed": ({"augment_on": "device", "batch_size": 64},
             {"data": {"size": [96, 56], "batch_size": 8, "num_workers": 0},
              "model": {"backbone": "resnet18", "head": [16]}}),
    "vertebra": ({"batch_size": 16},
                 {"data": {"size": [192, 112], "batch_size": 4, "num_workers": 0},
                  "vertebra": {"detector_size": [96, 56], "crop_size": 32, "width": 16,
                               "detector_backbone": "resnet10t", "landmark_backbone": "resnet10t"}}),
}


def train_check(out: Path, phantom: Path, smoke: bool, preset: str = "seed") -> Path:
    """2 epochs of a preset: the image-level seed preset or the per-vertebra one (smoke: a tiny CPU
    stand-in that exercises the same code)."""
    import vfa.training.train as train_mod

    data, tiny = PRESET_CHECKS[preset]
    manifest = phantom / "manifest.csv"
    overrides = {"data": {"train": f"{manifest}:train", "val": f"{manifest}:val",
                          "num_workers": min(8, os.cpu_count() or 1), **data},
                 "trainer": {"precision": "bf16-mixed", "accelerator": "gpu", "devices": 1, "progress": False,
                             "logger": "none"},
                 "optim": {"epochs": 2}}
    if smoke:
        overrides = config_mod.merged_dict(overrides, {**tiny, "trainer": {"accelerator": "cpu"}})
    cfg = config_mod.resolve(preset, overrides=overrides)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0, timer = time.perf_counter(), StepTimer()
    make = train_mod.make_trainer  # the library's own trainer, with the timer added

    def with_timer(cfg, run_dir, extra_callbacks=(), **kw):
        return make(cfg, run_dir, (*extra_callbacks, timer), **kw)

    train_mod.make_trainer = with_timer
    try:
        run = Path(vfa.train(cfg, out / f"run-{preset}", force=True))
    finally:
        train_mod.make_trainer = make
    busy = sum(timer.step) + sum(timer.wait)
    emit(row=f"train {preset} preset {cfg.data.size[0]}x{cfg.data.size[1]}, bf16, augment_on={cfg.data.augment_on}, batch "
             f"{cfg.data.batch_size}, 2nd epoch", seconds_total=round(time.perf_counter() - t0, 1),
         train_img_per_s=round(timer.images / busy, 1), loader_wait_share=round(sum(timer.wait) / busy, 3),
         steps=len(timer.step), peak_gpu_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2)
         if torch.cuda.is_available() else None)
    return run


def main(out: Path, n_files: int) -> int:
    if os.environ.get("VFA_GPU_CHECK_SMOKE"):  # the training check's code on CPU, tiny (CI-free sanity run)
        from vfa.phantom.synth import PhantomConfig

        vfa.synthesize(out / "smoke", PhantomConfig(n=40, size=(160, 96), prevalence=0.5, seed=0, workers=1),
                       progress=False, force=True)
        for preset in PRESET_CHECKS:
            train_check(out, out / "smoke", smoke=True, preset=preset)
        return 0
    if not torch.cuda.is_available():
        print("no CUDA GPU visible: nothing to check", file=sys.stderr)
        return 2
    emit(gpu=torch.cuda.get_device_name(0), torch=torch.__version__, cpus=os.cpu_count())
    phantom = out / "phantom"
    if not (phantom / "manifest.csv").exists():
        from vfa.phantom.synth import PhantomConfig

        vfa.synthesize(phantom, PhantomConfig(n=3000, prevalence=0.5, seed=0), progress=False, force=True)
    run = train_check(out, phantom, smoke=False)
    train_check(out, phantom, smoke=False, preset="vertebra")   # the per-vertebra family (1024 x 614)
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
        # auto's own verdict on the GPU: its candidate against fp32 on the first batch (issue 29)
        job = json.loads((out / f".p_{backend}.csv.vfa-job.json").read_text())
        emit(row=f"predict {n_files} files, backend {backend} (ran {s.backend})", seconds=round(s.seconds, 1),
             img_per_s=round(s.now / s.seconds, 1), model_only_img_per_s=round(model_only(ckpt, s.backend), 1),
             peak_gpu_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
             max_dp_vs_fp32=float(abs(p - ref).max()), timings=job.get("timings"),
             **({"auto_check": job["backend_checks"]} if backend == "auto" else {}))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/gpu-check"),
                  int(sys.argv[2]) if len(sys.argv) > 2 else 20000))
