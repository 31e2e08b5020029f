"""`--backend auto` verifies its candidate against fp32 (issue 29): the candidate (here torch-bf16, made
to disagree or agree on purpose) serves a job only once it reproduces fp32's P(fracture) to
AGREEMENT_TOL on the first batch (topped up by the fixed probe); otherwise the job runs in fp32,
says so in one line and in its job record. Exact models (preset keras215) get fp32 from auto.
The real-Keras case (a random-BN .h5, default `vfa predict`) is in tests/models/test_keras_import.py."""
import json

import numpy as np
import pytest
import torch

from tests.helpers import make_checkpoint, write_folder
from vfa import config as config_mod
from vfa.cli import main as cli_main
from vfa.inference import backends
from vfa.inference.predict import predict_files

KW = {"device": "cpu", "num_workers": 0}


def _exact_checkpoint(path):
    """A random-weight checkpoint with the keras215 preset, as `vfa import-keras` writes (small net)."""
    from vfa import checkpoint
    from vfa.models.network import build_from_config

    cfg = config_mod.resolve("keras215", overrides=config_mod.parse_set(
        ["data.size=[64,40]", "model.backbone=resnet18", "model.head=[16]"]))
    torch.manual_seed(2)
    return checkpoint.save(path, build_from_config(cfg.model), cfg, force=True)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    return {"ckpt": make_checkpoint(root / "a.ckpt"), "exact": _exact_checkpoint(root / "k.ckpt"),
            "data": write_folder(root / "imgs", n_per_class=5, size=(70, 44))}  # 10 images


@pytest.fixture
def fake_bf16(monkeypatch):
    """auto's candidate is torch-bf16 on any CPU; its forward is fp32's logits + calls["shift"], counted."""
    calls = {"n": 0, "shift": 0.0}
    monkeypatch.setattr(backends, "native_bf16", lambda device="cpu": True)

    def forward(model, x, device):
        calls["n"] += 1
        return model(x) + calls["shift"]

    monkeypatch.setattr(backends, "_bf16_forward", forward)
    return calls


def test_disagreeing_candidate_falls_back_to_fp32_in_one_line(env, fake_bf16, tmp_path, capsys):
    fake_bf16["shift"] = 3.0  # a logit shift of 3: |dP| up to ~0.5, as bf16 did on the random-BN import
    ref = predict_files(env["ckpt"], [env["data"]], batch_size=8, backend="torch", **KW)["raw"].to_numpy()
    lines = []
    got = predict_files(env["ckpt"], [env["data"]], batch_size=8, backend="auto", log=lines.append, **KW)
    assert len(lines) == 1 and "torch-bf16 differs from fp32" in lines[0] and "fp32 (torch)" in lines[0]
    assert got.attrs["backend"] == "torch"
    check = got.attrs["backend_checks"][0]
    assert check["fallback"] and check["max_dp"] > backends.AGREEMENT_TOL and check["checked_on"] == 8
    assert fake_bf16["n"] == 1  # the candidate ran on the check only, never on the second batch
    np.testing.assert_allclose(got["raw"].to_numpy(), ref, atol=1e-6, rtol=0)

    # the CLI with its defaults: the line on stderr, the decision in the job record, fp32's numbers
    out = tmp_path / "p.csv"
    assert cli_main(["predict", "--model", str(env["ckpt"]), str(env["data"]), "--out", str(out),
                     "--device", "cpu", "--workers", "0", "--batch-size", "8"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "differs from fp32" in line]
    assert len(err) == 1, err
    job = json.loads((tmp_path / ".p.csv.vfa-job.json").read_text())
    assert job["backend"] == "torch" and job["backend_checks"][0]["fallback"] is True
    # the run's phases, for make bench's start-up breakdown (plumbing: each is a wall time >= 0)
    assert set(job["timings"]) == {"load model", "check files", "engine set-up", "first batch", "other batches",
                                   "write"} and min(job["timings"].values()) >= 0
    import pandas as pd

    np.testing.assert_allclose(pd.read_csv(out)["raw"].to_numpy(), ref, atol=1e-6, rtol=0)
    # a resume with the same settings is not refused for the record's backend keys
    assert cli_main(["predict", "--model", str(env["ckpt"]), str(env["data"]), "--out", str(out),
                     "--device", "cpu", "--workers", "0", "--resume"]) == 0


def test_evaluate_records_the_fallback(env, fake_bf16, tmp_path):
    from vfa.evaluation.evaluate import evaluate

    fake_bf16["shift"] = -3.0
    lines = []
    metrics = evaluate(env["ckpt"], env["data"], tmp_path / "ev", report=False, progress=False, batch_size=8,
                       log=lines.append, **KW)
    assert metrics["backend"] == "torch" and metrics["backend_checks"][0]["fallback"] is True
    assert sum("differs from fp32" in line for line in lines) == 1


def test_agreeing_candidate_keeps_the_fast_backend(env, fake_bf16):
    ref = predict_files(env["ckpt"], [env["data"]], batch_size=4, backend="torch", **KW)["raw"].to_numpy()
    lines = []
    got = predict_files(env["ckpt"], [env["data"]], batch_size=4, backend="auto", log=lines.append, **KW)
    assert got.attrs["backend"] == "torch-bf16" and not lines
    check = got.attrs["backend_checks"][0]
    assert not check["fallback"] and check["max_dp"] <= backends.AGREEMENT_TOL
    assert check["checked_on"] == backends.PROBE_MIN  # a first batch of 4, topped up by 4 probe images
    assert fake_bf16["n"] == 2 + 2  # the check (batch + one probe batch), then batches 2 and 3 (4 + 4 + 2)
    np.testing.assert_allclose(got["raw"].to_numpy(), ref, atol=1e-6, rtol=0)


def test_exact_models_get_fp32_from_auto_unless_asked_and_ensembles_decide_per_member(env, fake_bf16):
    got = predict_files(env["exact"], [env["data"]], backend="auto", **KW)
    assert got.attrs["backend"] == "torch" and fake_bf16["n"] == 0
    assert "keras215 declares exactness" in got.attrs["backend_checks"][0]["auto"]
    asked = predict_files(env["exact"], [env["data"]], backend="torch-bf16", **KW)  # the user's choice stands
    assert asked.attrs["backend"] == "torch-bf16" and fake_bf16["n"] > 0
    both = predict_files([env["exact"], env["ckpt"]], [env["data"]], backend="auto", **KW)
    assert [c["backend"] for c in both.attrs["backend_checks"]] == ["torch", "torch-bf16"]
    assert "torch-bf16" in both.attrs["backend"] and "torch," in both.attrs["backend"]


def test_tiny_job_is_checked_on_the_fixed_probe(env, fake_bf16):
    """One image: the check covers it and PROBE_MIN - 1 probe images, in batches of the job's shape."""
    from vfa.inference.predict import load_model

    model = load_model(env["ckpt"])
    x = torch.rand(1, 3, 64, 40, generator=torch.Generator().manual_seed(0))
    runner = backends.with_backend(model, "auto", n_images=6)  # e.g. one image and TTA x5
    with torch.inference_mode():
        z = runner(x)
        ref = model(x)
    assert runner.record["checked_on"] == backends.PROBE_MIN and fake_bf16["n"] == backends.PROBE_MIN
    assert torch.allclose(z, ref, atol=1e-6)
    probe = backends.probe_batches(x, 5)
    again = backends.probe_batches(x, 5)
    assert len(probe) == 5 and all(p.shape == x.shape for p in probe)
    assert all(torch.equal(a, b) for a, b in zip(probe, again))  # fixed: the same in every run
    assert float(torch.cat(probe).min()) >= float(x.min()) and float(torch.cat(probe).max()) <= float(x.max())
    assert backends.probe_batches(torch.rand(8, 3, 64, 40), 0) == []


def test_a_job_of_one_forward_pass_runs_fp32_without_a_check(env, fake_bf16):
    got = predict_files(env["ckpt"], [env["data"]], batch_size=16, backend="auto", **KW)  # 10 images, 1 batch
    assert got.attrs["backend"] == "torch" and fake_bf16["n"] == 0
    assert got.attrs["backend_checks"][0]["checked_on"] == 0


def test_exact_model_runs_the_cached_fp32_engine_and_keeps_torch_numbers(env, fake_bf16, tmp_path, monkeypatch):
    """Issue 29: an exact model's default is fast fp32, never a reduced precision: with its ONNX export
    cached (as `vfa import-keras` leaves it), auto runs onnxruntime fp32, which equals torch's NCHW
    fp32 to 1e-5; the record says which engine ran and why."""
    pytest.importorskip("onnxruntime")
    from vfa.inference.export import cached_onnx
    from vfa.inference.predict import load_model

    monkeypatch.setenv("VFA_CACHE", str(tmp_path / "cache"))
    ref = predict_files(env["exact"], [env["data"]], backend="torch", **KW)["raw"].to_numpy()
    cached_onnx(load_model(env["exact"]))
    got = predict_files(env["exact"], [env["data"]], backend="auto", **KW)
    check = got.attrs["backend_checks"][0]
    assert got.attrs["backend"] == "onnxruntime" and fake_bf16["n"] == 0
    assert "declares exactness" in check["auto"] and "onnxruntime fp32" in check["engine"]
    np.testing.assert_allclose(got["raw"].to_numpy(), ref, atol=1e-5, rtol=0)
    # the whole CLI process then builds no torch network and never imports timm (torchvision, torch._dynamo)
    import subprocess
    import sys

    code = ("import sys; from vfa.cli import main; "
            f"main(['predict', '--model', {str(env['exact'])!r}, {str(env['data'])!r}, '--out', "
            f"{str(tmp_path / 'p.csv')!r}, '--device', 'cpu', '--workers', '0']); "
            "print('timm' in sys.modules, 'torchvision' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.split()[-2:] == ["False", "False"], run.stdout + run.stderr
    job = json.loads((tmp_path / ".p.csv.vfa-job.json").read_text())
    assert "no torch network built" in job["backend_checks"][0]["engine"]
    import pandas as pd

    np.testing.assert_allclose(pd.read_csv(tmp_path / "p.csv")["raw"].to_numpy(), ref, atol=1e-5, rtol=0)
