"""ONNX export and the inference backends agree with fp32 torch (issue 7's accuracy criterion).

No timing here: speed is measured by `make bench` (benchmarks/bench.py), never asserted in tests.
"""
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import vfa
from tests.helpers import make_checkpoint
from tests.helpers import tiny_cfg
from vfa.cli import main as cli_main
from vfa.data.samples import load_samples
from vfa.inference.export import export_onnx
from vfa.inference.backends import resolve_backend, with_backend
from vfa.data.dataset import create_dataset
from vfa.inference.predict import load_model, predict_files, predict_loader

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("export") / "a.ckpt")


def test_onnx_export_matches_torch_and_carries_metadata(ckpt, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert cli_main(["export", "--model", str(ckpt), "--format", "onnx", "--out", str(out)]) == 0
    assert "max |delta p|" in capsys.readouterr().out
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["vfa_config"])["data"]["size"] == [64, 40] and float(meta["vfa_threshold"]) == 0.5
    assert cli_main(["export", "--model", str(ckpt), "--out", str(out)]) == 2  # no overwrite without --force

    model = load_model(ckpt)
    x = torch.rand(5, 3, 64, 40, generator=torch.Generator().manual_seed(3))  # batch 5: the batch axis is dynamic
    import onnxruntime as ort

    got = ort.InferenceSession(str(out)).run(None, {"image": x.numpy()})[0]
    with torch.inference_mode():
        ref = model(x).numpy()
    assert np.abs(1 / (1 + np.exp(-got)) - 1 / (1 + np.exp(-ref))).max() <= 1e-4


def test_backend_predictions_match_fp32(ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("VFA_CACHE", str(tmp_path / "cache"))
    from tests.helpers import write_folder

    data = write_folder(tmp_path / "imgs", n_per_class=3, size=(70, 44))
    model = load_model(ckpt)
    ref = predict_files(model, [data], backend="torch")["raw"].to_numpy()
    ort = predict_files(model, [data], backend="onnxruntime")["raw"].to_numpy()
    bf16 = predict_files(model, [data], backend="torch-bf16")["raw"].to_numpy()
    assert np.abs(ort - ref).max() <= 1e-4
    assert np.abs(bf16 - ref).max() <= 0.02
    assert list((tmp_path / "cache" / "onnx").glob("*.onnx"))  # exported once, reused next time
    from vfa.inference.backends import AUTO_COMPILE_MIN, native_bf16

    small, large = resolve_backend("auto", 10), resolve_backend("auto", 10 * AUTO_COMPILE_MIN)
    if native_bf16("cpu"):  # AMX / AVX512-BF16: bf16 eager for small jobs, compiled for long ones
        assert (small, large) == ("torch-bf16", "compile")
    else:  # emulated bf16 is slower than fp32: fp32 (run on fp32_backend's engine, below)
        assert (small, large) == ("torch", "torch")
    assert resolve_backend("auto", 10, "cuda") == "torch-bf16"
    assert vfa.predict(model, torch.rand(2, 3, 64, 40), backend="torch-bf16").shape == (2,)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch-bf16", "onnxruntime", "compile"])
def test_trained_model_backends_preserve_auc(tiny_phantom, tmp_path_factory, monkeypatch, backend):
    """A briefly trained model on the phantom test split: max |delta p| <= 0.02, and the AUC moves only
    through pairs closer than the backend's error."""
    monkeypatch.setenv("VFA_CACHE", str(tmp_path_factory.getbasetemp() / "vfa-cache"))
    run = tmp_path_factory.getbasetemp() / "export-trained"
    if not (run / "checkpoints" / "best.ckpt").is_file():
        vfa.train(tiny_cfg(tiny_phantom, epochs=3), run, force=True)
    samples = load_samples(tiny_phantom / "test")
    y = np.asarray(samples.labels)

    def probs(name):
        model = load_model(run / "checkpoints" / "best.ckpt")
        loader = torch.utils.data.DataLoader(create_dataset(model, samples.paths), batch_size=4)
        return predict_loader(with_backend(model, name), loader)

    ref, got = probs("torch"), probs(backend)
    err = np.abs(got - ref).max()
    assert err <= 0.02
    # the AUC can only move through near-ties: every fractured/normal pair whose scores differ by
    # more than twice the backend's error keeps its order (a 3-epoch model's scores may all lie
    # within 1e-3 of each other, so |delta AUC| itself is no test of the backend)
    pos, neg = ref[y == 1][:, None], ref[y == 0][None, :]
    gpos, gneg = got[y == 1][:, None], got[y == 0][None, :]
    clear = np.abs(pos - neg) > 2 * err
    assert np.array_equal(np.sign(gpos - gneg)[clear], np.sign(pos - neg)[clear])
    assert abs(roc_auc_score(y, got) - roc_auc_score(y, ref)) <= (~clear).mean() + 1e-9


@pytest.mark.slow
def test_int8_backend_preserves_a_discriminating_models_auc(tmp_path, monkeypatch):
    """int8 on a model that separates its classes (the 3-epoch phantom model's scores are tied
    within 1e-4, which any quantization reorders): max |delta p| <= 0.02, |delta AUC| <= 0.002."""
    from tests.helpers import write_folder

    monkeypatch.setenv("VFA_CACHE", str(tmp_path / "cache"))
    for split, seed in (("train", 0), ("val", 1), ("test", 2)):
        write_folder(tmp_path / "data" / split, n_per_class=20, size=(96, 56), seed=seed)
    run = vfa.train(tiny_cfg(tmp_path / "data", epochs=3), tmp_path / "run", log=lambda m: None)
    samples = load_samples(tmp_path / "data" / "test")
    y = np.asarray(samples.labels)

    def probs(name):
        model = load_model(run / "checkpoints" / "best.ckpt")
        loader = torch.utils.data.DataLoader(create_dataset(model, samples.paths), batch_size=8)
        return predict_loader(with_backend(model, name, calibration=samples.paths), loader)

    ref, got = probs("torch"), probs("onnxruntime-int8")
    assert roc_auc_score(y, ref) >= 0.9  # the comparison means something
    assert np.abs(got - ref).max() <= 0.02
    assert abs(roc_auc_score(y, got) - roc_auc_score(y, ref)) <= 0.002


def test_int8_export_is_quantized_checked_and_refused_when_too_far(ckpt, tmp_path, capsys, monkeypatch):
    from tests.helpers import write_folder

    data = write_folder(tmp_path / "cal", n_per_class=5, size=(70, 44))
    out = tmp_path / "model-int8.onnx"
    args = ["export", "--model", str(ckpt), "--format", "onnx-int8", "--out", str(out)]
    assert cli_main(args) == 2 and "--calibration" in capsys.readouterr().err
    assert cli_main(args + ["--calibration", str(data)]) == 0
    printed = capsys.readouterr().out
    assert "int8: calibrated on 5 images" in printed and "on 5 others" in printed
    graph = onnx.load(str(out))
    assert any(n.op_type == "QuantizeLinear" for n in graph.graph.node)
    meta = {p.key: p.value for p in graph.metadata_props}
    assert "vfa_config" in meta and meta["vfa_int8_calibration_images"] == "5"

    import vfa.inference.export as export_mod  # a bound no int8 model meets: the file is refused and removed
    monkeypatch.setattr(export_mod, "INT8_TOLERANCE", 0.0)
    bad = tmp_path / "bad.onnx"
    assert cli_main(["export", "--model", str(ckpt), "--format", "onnx-int8", "--out", str(bad),
                     "--calibration", str(data)]) != 0
    assert "int8 quantization changes P(fracture)" in capsys.readouterr().err
    assert not bad.exists() and not list(tmp_path.glob("bad.onnx*"))


def test_openvino_backend_matches_fp32(tmp_path, monkeypatch):
    """OpenVINO (bf16 where the CPU has it, else fp32) within the same 0.02 as every other backend."""
    pytest.importorskip("openvino", reason="openvino is an optional extra (installed by make test)")
    monkeypatch.setenv("VFA_CACHE", str(tmp_path / "cache"))
    from tests.helpers import make_checkpoint, write_folder

    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    data = write_folder(tmp_path / "imgs", n_per_class=3, size=(70, 44))
    ref = predict_files(ckpt, [data], backend="torch", device="cpu")["raw"].to_numpy()
    ov = predict_files(ckpt, [data], backend="openvino", device="cpu")["raw"].to_numpy()
    assert np.abs(ov - ref).max() <= 0.02


def test_fp32_engine_is_exact_and_exports_only_when_it_pays(ckpt, tmp_path, monkeypatch):
    """Issue 29: what auto runs as fp32 (exact models, fallbacks, CPUs without bf16) is the fastest exact
    engine: torch channels_last for a short job without a cached export, onnxruntime once the export is
    cached or the job repays it; both reproduce torch fp32 (NCHW eager, the reference) to 1e-5."""
    from vfa.inference.backends import AUTO_ONNX_MIN, fp32_backend
    from vfa.inference.export import CACHE_TOLERANCE

    monkeypatch.setenv("VFA_CACHE", str(tmp_path / "cache"))
    model = load_model(ckpt)
    x = torch.rand(6, 3, 64, 40, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        ref = torch.sigmoid(load_model(ckpt)(x))
        short = fp32_backend(model, 10, "cpu")
        assert short.record == {"backend": "torch", "engine": "torch fp32, channels_last"}
        assert not (tmp_path / "cache" / "onnx").exists()  # a short job does not pay for an export
        assert (torch.sigmoid(short(x)) - ref).abs().max() <= CACHE_TOLERANCE
        long = fp32_backend(model, AUTO_ONNX_MIN, "cpu")
        assert long.name == "onnxruntime" and "onnxruntime fp32" in long.record["engine"]
        assert (torch.sigmoid(long(x)) - ref).abs().max() <= CACHE_TOLERANCE
        assert fp32_backend(model, 1, "cpu").name == "onnxruntime"  # cached now: used for any job size
