"""Report outputs: Excel and .npy round trips with the notebook's names, a self-contained report.html."""
import base64
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from vfa.evaluation import report
from vfa.stats import accuracy as stats
from vfa.evaluation.evaluate import score_metrics


def _results(frame, primary="raw", threshold=0.5):
    y = frame["label"].to_numpy()
    scores = report.scores_in(frame)
    return {"score": primary, "scores": {s: score_metrics(y, frame[s].to_numpy(), threshold) for s in scores},
            "operating_points": {s: stats.operating_points(y, frame[s].to_numpy()) for s in scores}}


def _frame(n=30, tta=True, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    raw = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, n), 0, 1)
    f = pd.DataFrame({"image_id": [f"id{i:03d}" for i in range(n)],
                      "file": [f"{'frac' if v else 'norm'}/img_{i:03d}.png" for i, v in enumerate(y)],
                      "label": y, "raw": raw})
    if tta:
        passes = np.clip(raw[:, None] + rng.normal(0, 0.05, (n, 5)), 0, 1)
        f["tta_mean"], f["tta_max"] = passes.mean(1), passes.max(1)
    f["predicted"] = (f["raw"] >= 0.5).astype(int)
    return f


def test_excel_and_npy_round_trip(tmp_path):
    frame = _frame()
    results = _results(frame)
    report.write_all(tmp_path, frame, results, {"model": "m.ckpt"})
    book = pd.read_excel(tmp_path / "final_results.xlsx", sheet_name=None)
    assert set(book) == {"predictions", "metrics", "operating points", "info"}
    pred = book["predictions"]
    assert list(pred.columns)[:5] == ["filenames", "labels", "raw predictions", "max augmented predictions",
                                      "mean augmented predictions"]
    assert list(pred["filenames"]) == list(frame["image_id"])
    np.testing.assert_allclose(pred["raw predictions"], frame["raw"])
    np.testing.assert_allclose(pred["max augmented predictions"], frame["tta_max"])
    np.testing.assert_allclose(pred["mean augmented predictions"], frame["tta_mean"])
    metrics = book["metrics"].set_index(["score", "metric"])
    assert metrics.loc[("raw", "Sensitivity"), "value"] == pytest.approx(results["scores"]["raw"]["sn"])
    assert metrics.loc[("tta_max", "AUC"), "ci_low"] == pytest.approx(results["scores"]["tta_max"]["auc_ci"][0])
    assert len(book["operating points"]) == 3 * 19

    load = {k: np.load(tmp_path / f"{k}.npy", allow_pickle=False) for k in
            ("test_fnames", "test_classes", "test_preds", "test_max_preds", "test_mean_preds")}
    assert list(load["test_fnames"]) == list(frame["file"])
    np.testing.assert_array_equal(load["test_classes"], frame["label"])
    assert load["test_preds"].shape == (30, 1)  # predict_generator's (N, 1), as the notebook saved
    np.testing.assert_allclose(load["test_preds"][:, 0], frame["raw"], rtol=1e-6)
    np.testing.assert_allclose(load["test_max_preds"], frame["tta_max"])
    np.testing.assert_allclose(load["test_mean_preds"], frame["tta_mean"])


def test_report_html_is_self_contained_with_every_figure(tmp_path):
    frame = _frame()
    report.write_all(tmp_path, frame, _results(frame), {"model": "<m>.ckpt"})
    text = (tmp_path / "report.html").read_text()
    for name in report.FIGURES:
        assert (tmp_path / f"{name}.png").is_file()
        m = re.search(rf"id='fig-{name}'[^>]*src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
        assert m, name
        assert base64.b64decode(m.group(1)) == (tmp_path / f"{name}.png").read_bytes()
    assert not re.search(r"(src|href)=['\"](?!data:)", text)  # nothing fetched from elsewhere
    assert "&lt;m&gt;.ckpt" in text  # escaped
    assert "Wilson" in text and "DeLong" in text and "Operating points" in text


def test_without_tta_and_single_class_no_crash(tmp_path):
    frame = _frame(tta=False)
    frame = frame[frame["label"] == 0].reset_index(drop=True)
    results = _results(frame)
    assert results["scores"]["raw"]["notes"]
    report.write_all(tmp_path, frame, results, {})
    assert not (tmp_path / "test_max_preds.npy").exists()
    pred = pd.read_excel(tmp_path / "final_results.xlsx", sheet_name="predictions")
    assert list(pred.columns) == ["filenames", "labels", "raw predictions", "predicted class"]
    assert "AUC undefined: only one class present" in (tmp_path / "report.html").read_text()
    assert (tmp_path / "roc.png").stat().st_size > 0


def test_roc_band_contains_the_curve():
    frame = _frame(n=200)
    grid, lo, hi = report.roc_band(frame["label"], frame["raw"], n_boot=100)
    assert (lo <= hi).all() and lo[-1] == pytest.approx(1.0) and hi[0] >= 0
    again = report.roc_band(frame["label"], frame["raw"], n_boot=100)
    np.testing.assert_array_equal(lo, again[1])  # seeded


@pytest.mark.parametrize("n, bins, each", [(24, 3, 8), (30, 3, 10), (300, 10, 30), (2000, 10, 200)])
def test_reliability_bins_hold_equal_counts_and_match_scikit_learn(n, bins, each):
    from sklearn.calibration import calibration_curve
    from statsmodels.stats.proportion import proportion_confint

    frame = _frame(n=n, tta=False, seed=3)
    y, p = frame["label"].to_numpy(), frame["raw"].to_numpy()
    got = report.reliability_bins(y, p)
    assert [b["n"] for b in got] == [each] * bins  # not 1-3 images a bin on a small set
    true, pred = calibration_curve(y, p, n_bins=bins, strategy="quantile")
    assert [b["observed"] for b in got] == pytest.approx(true)
    assert [b["mean_p"] for b in got] == pytest.approx(pred)
    for b in got:
        k = round(b["observed"] * b["n"])
        assert b["ci"] == pytest.approx(proportion_confint(k, b["n"], method="wilson"))


def test_reliability_shows_counts_and_keeps_its_legend_off_the_points():
    frame = _frame(n=24, seed=3)
    fig = report.fig_reliability(frame, _results(frame))
    ax = fig.axes[0]
    assert ax.get_legend() is None and fig.legends  # the legend is the figure's, below the plots
    legend_box = fig.legends[0].get_window_extent(fig.canvas.get_renderer())
    assert legend_box.y1 < fig.axes[1].get_window_extent(fig.canvas.get_renderer()).y0
    assert len(ax.texts) == 0 and "3 bins of equal counts (8 images each)" in ax.get_title()  # equal: said once
    plt.close(fig)
    frame.loc[frame.index[:12], "raw"] = 0.5  # tied scores merge bins: unequal counts, each bin labelled
    fig = report.fig_reliability(frame, _results(frame))
    counts = [b["n"] for b in report.reliability_bins(frame["label"], frame["raw"])]
    assert max(counts) - min(counts) > 1 and "beside each point" in fig.axes[0].get_title()
    assert sorted(t.get_text() for t in fig.axes[0].texts) == sorted(str(n) for n in counts)
    plt.close(fig)
    fig = report.fig_sn_sp(frame, _results(frame))
    assert "sensitivity" in fig.axes[0].get_ylabel()
    plt.close(fig)


def test_the_gallery_shows_a_one_pixel_peak_as_a_blob():
    from vfa.explain.render import DISPLAY_SIGMA, display_heat

    heat = np.zeros((384, 224), np.float32)
    heat[200, 100] = 1.0  # LayerCAM at stride 4: a dot, one pixel of a 320 px thumbnail
    shown = display_heat(heat, DISPLAY_SIGMA * heat.shape[0])
    assert shown.max() == pytest.approx(1.0) and np.unravel_index(shown.argmax(), shown.shape) == (200, 100)
    assert (shown > 0.5).sum() > 50  # a blob of several pixels across: ~2 sigma = 11 px wide
    assert heat.sum() == 1.0 and display_heat(np.zeros((4, 4)), 1.0).max() == 0  # input kept; an empty map stays 0
