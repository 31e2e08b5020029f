import numpy as np
import pytest
import torch

from vfa.training.schedule import build_scheduler, cos_sgdr, cos_sgdr_sched, sgdr_lambda

# docs/notebook-differences.md: cos_sgdr_sched(10, 1, 2) x 1e-4
PINNED = [1.0000e-4, 9.7553e-5, 9.0451e-5, 7.9389e-5, 6.5451e-5, 5.0000e-5, 3.4549e-5, 2.0611e-5,
          9.5492e-6, 2.4472e-6]


def test_notebook_schedule_values():
    np.testing.assert_allclose(np.array(cos_sgdr_sched(10, 1, 2)) * 1e-4, PINNED, rtol=1e-4)


def test_cycle_lengths_and_exact_count():
    assert len(cos_sgdr_sched(10, 3, 2)) == 10 + 20 + 40
    for n in (49, 98):  # np.arange(0, 1, 1/n) gives n+1 values here; ours gives n
        assert len(cos_sgdr(n)) == n
    assert min(cos_sgdr_sched(10, 1, 2)) > 0


def test_equals_torch_warm_restarts_per_epoch():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=5, T_mult=2)
    rates = []
    for _ in range(35):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(rates, cos_sgdr_sched(5, 3, 2), atol=1e-12)


def test_lambda_and_scheduler():
    f = sgdr_lambda(10, 1, 2)
    assert f(0) == 1.0 and f(100) == pytest.approx(PINNED[-1] / 1e-4, rel=1e-4)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1e-4)
    cfg = build_scheduler(opt, 10, 1, 2, per_step=False, steps_per_epoch=7)
    assert cfg["interval"] == "epoch"
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        cfg["scheduler"].step()
    np.testing.assert_allclose(seen, PINNED, rtol=1e-4)
    assert build_scheduler(opt, 10, 1, 2, per_step=True, steps_per_epoch=7)["interval"] == "step"
