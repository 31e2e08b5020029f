"""The table and BENCHMARKS.md from bench.py's rows (name -> {"img_per_s", ...})."""
from __future__ import annotations

import datetime

LABELS = {
    "vfa_torch_infer": "vfa inference, torch fp32 eager",
    "vfa_torch-bf16_infer": "vfa inference, bf16 autocast + channels_last",
    "vfa_compile_infer": "vfa inference, torch.compile (frozen) + bf16",
    "vfa_onnxruntime_infer": "vfa inference, ONNX Runtime fp32",
    "vfa_onnxruntime-int8_infer": "vfa inference, ONNX Runtime int8 (static, convolutions)",
    "keras_fp32_infer": "Keras inference, fp32 (the notebook)",
    "keras_bf16_infer": "Keras inference, mixed_bfloat16",
    "vfa_fp32_train": "vfa training step, fp32 (NCHW)",
    "vfa_fp32_cl_train": "vfa training step, fp32 + channels_last",
    "vfa_bf16_nchw_train": "vfa training step, bf16-mixed (NCHW)",
    "vfa_bf16_train": "vfa training step, bf16-mixed + channels_last (the default on this CPU)",
    "vfa_bf16_compile_train": "vfa training step, bf16-mixed + channels_last + torch.compile",
    "keras_fp32_train": "Keras training step, fp32",
    "keras_bf16_train": "Keras training step, mixed_bfloat16",
    "vfa_data_augment_1proc": "vfa input pipeline (decode+resize+seed augment), 1 core",
    "keras_data_augment_1proc": "Keras ImageDataGenerator (notebook augment), 1 process",
    "vfa_data_augment_batch": "vfa batch augmentation (augment_on=device; here CPU threads), seed preset",
}


def _rate(rows, name):
    r = rows.get(name)
    return r["img_per_s"] if r else None


def _ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "n/a"


def _best(rows, names):
    got = [(rows[n]["img_per_s"], n) for n in names if n in rows]
    return max(got) if got else (None, None)


def _note(row) -> str:
    bits = []
    if row.get("first_call_s") is not None and row["name"].startswith("vfa") and (
            row["name"].endswith("_infer") or "compile" in row["name"]):
        bits.append(f"first call {row['first_call_s']} s")
    if row.get("setup_s"):
        bits.append(f"setup {row['setup_s']} s")
    if row.get("max_abs_dp_vs_fp32") is not None and "torch_infer" not in row["name"]:
        bits.append(f"max Δp vs fp32 {row['max_abs_dp_vs_fp32']:.1e}")
    if row["name"].startswith("vfa") and row.get("peak_rss_mb"):
        bits.append(f"peak RSS {row['peak_rss_mb'] / 1024:.1f} GiB")
    return "; ".join(bits)


def render(rows: dict, errors: dict, machine: str, versions: dict, repeats: int) -> tuple[str, str]:
    kf_i, kb_i = _rate(rows, "keras_fp32_infer"), _rate(rows, "keras_bf16_infer")
    kf_t, kb_t = _rate(rows, "keras_fp32_train"), _rate(rows, "keras_bf16_train")
    lines = ["| measurement | img/s | vs Keras fp32 | vs Keras mixed-bf16 | notes |", "|---|---:|---:|---:|---|"]
    for name, label in LABELS.items():
        row = rows.get(name)
        if row is None:
            lines.append(f"| {label} | unmeasured | | | {errors.get(name, errors.get(name.rsplit('_', 1)[0], ''))} |")
            continue
        v = row["img_per_s"]
        if name.endswith("_infer"):
            rf, rb = _ratio(v, kf_i), _ratio(v, kb_i)
        elif name.endswith("_train"):
            rf, rb = _ratio(v, kf_t), _ratio(v, kb_t)
        else:
            rf, rb = _ratio(v, _rate(rows, "keras_data_augment_1proc")), ""
        note = _note(row)
        if name == "vfa_compile_infer" and "vfa_compile_infer_warm" in rows:
            note = note.replace("first call", "compile cold") + \
                f"; warm cache {rows['vfa_compile_infer_warm']['first_call_s']} s"
        lines.append(f"| {label} | {v:.2f} | {rf} | {rb} | {note} |")
    lines.append("| any GPU row | unmeasured | | | no GPU was lent to this run |")
    table = "\n".join(lines)

    best_i, best_i_name = _best(rows, [n for n in LABELS if n.startswith("vfa") and n.endswith("_infer")])
    best_t, best_t_name = _best(rows, [n for n in LABELS if n.startswith("vfa") and n.endswith("_train")])
    data = _rate(rows, "vfa_data_augment_1proc")

    def verdict(value, target):
        return "n/a" if value is None else ("met" if value >= target else "NOT met")

    r_ib = best_i / kb_i if best_i and kb_i else None
    r_if = best_i / kf_i if best_i and kf_i else None
    r_tb = best_t / kb_t if best_t and kb_t else None
    r_data = data / best_t if data and best_t else None
    dps = {n: rows[n]["max_abs_dp_vs_fp32"] for n in rows if rows[n].get("max_abs_dp_vs_fp32") is not None
           and n != "vfa_torch_infer"}
    stream = rows.get("vfa_compile_infer", {})
    targets = [
        f"| inference >= 3x Keras mixed-bf16 | {_fmt(r_ib)} ({LABELS.get(best_i_name, '-')}) | {verdict(r_ib, 3)} |",
        f"| inference >= 6x Keras fp32 | {_fmt(r_if)} | {verdict(r_if, 6)} |",
        f"| training step >= 2x Keras mixed-bf16 | {_fmt(r_tb)} ({LABELS.get(best_t_name, '-')}) | {verdict(r_tb, 2)} |",
        f"| input pipeline >= 10x training rate, per core | {_fmt(r_data)} | {verdict(r_data, 10)} |",
        "| bf16 / compiled / exported within 0.02 of fp32 (AUC within 0.002) | bench batch: "
        + ", ".join(f"{n.split('_')[1]} {v:.1e}" for n, v in dps.items())
        + " | checked on trained models by tests/test_export.py; int8 is also checked on every job "
        "(refused beyond 0.02) |",
        f"| training peak RSS, seed preset | fp32 {_gib(rows, 'vfa_fp32_train')}, bf16 {_gib(rows, 'vfa_bf16_train')}"
        " | reported |",
        f"| inference memory flat in #images | RSS after each batch (MiB): {stream.get('stream_rss_mb', 'n/a')}, "
        f"growth after batch 2: {stream.get('stream_rss_growth_mb', 'n/a')} MiB over "
        f"{stream.get('stream_images', '?')} images | {'met' if _flat(stream) else 'see numbers'} |",
    ]
    prof = rows.get("vfa_bf16_train", {}).get("profile_top")
    prof_md = "\n".join(f"| {k} | {v} % |" for k, v in prof) if prof else "| (not profiled) | |"
    text = f"""# Benchmarks

Generated by `make bench` (benchmarks/bench.py) on {datetime.date.today().isoformat()}. Ratios are
between rows of this one run on this one machine; absolute numbers move with the machine and load.

## Machine and versions

- {machine}
- {", ".join(f"{k} {v}" for k, v in versions.items())}

## Method

Seed preset: Inception-ResNet-v2 (timm) + GAP + Dense(1024) + Dense(1), input 600x360, batch 12, random
weights, one fixed random batch. Every row runs in a fresh process: one untimed warm-up call, then the
mean of {repeats} timed calls (training: {max(1, repeats - 1)}; Adam 1e-4, weighted BCE, as the notebook). The Keras
rows are /work/shared/bench/keras_seed.py (`predict_on_batch`, `train_on_batch`,
`ImageDataGenerator.flow_from_directory`) in its own venv (.venv-keras), run in the same `make bench`.
Input pipeline: `vfa.data.dataset.create_dataset(cfg, train=True)` with the seed augmentation, decoding 1024x614 phantom PNGs
to 600x360, one process, one thread. "first call" of torch.compile is its compile time (cold, or
less with inductor's on-disk cache warm under ~/.cache/vfa/inductor); "setup" of ONNX Runtime is
the one-off export + verification (cached under ~/.cache/vfa/onnx afterwards).

## Results

{table}

## Targets (issue 7)

| target | measured | verdict |
|---|---|---|
{chr(10).join(targets)}

## Roofline: what share of this CPU's dense-GEMM peak each pipeline reaches

{roofline(rows)}

## Where a bf16 training step spends its CPU time (torch.profiler, self time)

| op | share |
|---|---:|
{prof_md}
"""
    if errors:
        text += "\n## Not measured\n\n" + "\n".join(f"- {k}: {v}" for k, v in errors.items()) + "\n"
    return text, table


def roofline(rows) -> str:
    """Achieved GFLOP/s (img/s x forward GFLOP per image, x3 for a training step: forward, input and
    weight gradients) against torch.mm's bf16 and fp32 GFLOP/s on the same threads."""
    peak = rows.get("peak")
    if not peak:
        return "(not measured)"
    gf, bf, fp = peak["model_gflops"], peak["gemm_bf16_gflops"], peak["gemm_fp32_gflops"]
    lines = [f"Model: {gf} GFLOP per image forward (torch.utils.flop_counter; multiply-add = 2). Dense GEMM "
             f"(2048^3, torch.mm, all threads): bf16 {bf} GFLOP/s, fp32 {fp} GFLOP/s. One large bf16 "
             f"3x3 convolution (256->256 channels, 75x45, batch {12}, channels_last): "
             f"{peak.get('conv_bf16_gflops', 'n/a')} GFLOP/s.", "",
             "| pipeline | img/s | achieved GFLOP/s | % of bf16 GEMM peak | % of fp32 GEMM peak |",
             "|---|---:|---:|---:|---:|"]
    for name, label in LABELS.items():
        if name not in rows or not (name.endswith("_infer") or name.endswith("_train")):
            continue
        v = rows[name]["img_per_s"]
        achieved = v * gf * (3 if name.endswith("_train") else 1)
        lines.append(f"| {label} | {v:.2f} | {achieved:.0f} | {100 * achieved / bf:.0f} % | {100 * achieved / fp:.0f} % |")
    need = 3 * (rows.get("keras_bf16_infer") or {}).get("img_per_s", float("nan")) * gf
    lines += ["", f"3x Keras mixed-bf16 inference would need {need:.0f} GFLOP/s = {100 * need / bf:.0f} % of "
              "the bf16 GEMM peak." if need == need else ""]
    return "\n".join(lines)


def _fmt(v):
    return "n/a" if v is None else f"{v:.2f}x"


def _gib(rows, name):
    r = rows.get(name)
    return f"{r['peak_rss_mb'] / 1024:.1f} GiB" if r else "n/a"


def _flat(stream) -> bool:
    g = stream.get("stream_rss_growth_mb")
    return g is not None and g < 50
