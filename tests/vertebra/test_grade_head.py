"""The learned grade beside the rules (vertebra.grading): the severity head (its loss against
hand-worked cumulative targets and sklearn's log loss, its detached features, its prior, checkpoints
written before it), who grades each body in either mode, and what metrics.json says of it."""
import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss

from tests.vertebra.helpers import body
from vfa import checkpoint, config
from vfa.evaluation.vertebra_eval import reading
from vfa.inference.vertebra import body_scores, grade_bodies, spine_rows
from vfa.models.loading import load_model
from vfa.models.vertebra import SEVERITY_PRIOR, LandmarkNet
from vfa.registry import FAMILIES
from vfa.training.vertebra import severity_loss

TINY = ["data.size=[160,96]", "vertebra.detector_size=[96,56]", "vertebra.crop_size=32", "vertebra.width=16",
        "vertebra.detector_backbone=resnet10t", "vertebra.landmark_backbone=resnet10t"]


def test_rules_grading_is_the_rules_with_the_fracture_heads_calls_beside_them():
    rules = np.array([0, 0, 2, 3, 1])
    prob = np.array([0.2, 0.7, 0.1, 0.9, 0.4])
    grade, source = grade_bodies(rules, prob, 0.5, np.ones((5, 2)), "rules")   # severity is not used
    assert grade.tolist() == [0, 1, 2, 3, 1]
    assert source.tolist() == ["rules", "head", "rules", "rules", "rules"]


def test_head_grading_is_the_fracture_head_then_the_severity_head_in_turn():
    rules = np.array([3, 0, 0, 0, 0, 1])             # the rules' grades are not used
    prob = np.array([0.4, 0.6, 0.6, 0.6, 0.9, 0.5])
    sev = np.array([[0.9, 0.9], [0.1, 0.9], [0.5, 0.4], [0.8, 0.5], [0.2, 0.1], [0.0, 0.0]])
    grade, source = grade_bodies(rules, prob, 0.5, sev, "head")
    # not called; P(>=3) alone does not skip grade 2; >= 2; >= 3; mild; at the threshold: called, mild
    assert grade.tolist() == [0, 1, 2, 3, 1, 1]
    assert set(source) == {"head"}


def test_head_grading_in_the_rows_keeps_the_rules_shape_and_scores_the_image_by_the_head():
    pts = np.stack([body(0), body(40, ha=18.0), body(80)])    # the middle body: a wedge, 40 % loss by the rules
    lv = np.arange(3)
    prob, sev = np.array([0.8, 0.3, 0.1]), np.array([[0.7, 0.2], [0.9, 0.9], [0.0, 0.0]])
    ruled = spine_rows("a.png", pts, lv, prob, 0.5, None, sev, "rules")
    learned = spine_rows("a.png", pts, lv, prob, 0.5, None, sev, "head")
    assert ruled["grade"].tolist() == [1, 3, 0] and ruled["grade_source"].tolist() == ["head", "rules", "rules"]
    assert learned["grade"].tolist() == [2, 0, 0] and set(learned["grade_source"]) == {"head"}
    assert learned["type"].tolist()[1:] == ["normal", "normal"]
    # a body the head grades takes its shape from the rules' lowest ratio even where they say normal
    assert learned["type"].iloc[0] in ("wedge", "biconcave", "crush")
    np.testing.assert_allclose(body_scores(learned, 0.5), prob)      # every call is the head's: its P
    assert body_scores(ruled, 0.5)[1] >= 0.5                          # a rules call reaches the threshold


def test_the_severity_loss_is_cumulative_bce_over_readable_fractured_bodies():
    logits = torch.tensor([[0.3, -1.0], [2.0, 0.5], [-0.7, -2.0], [1.0, 1.0], [0.4, 0.2]])
    grade = torch.tensor([1, 3, 2, 2, 0])
    readable = torch.tensor([1, 1, -1, 0, 1])    # body 4: unreadable; body 5: not fractured; neither learned from
    got = severity_loss(logits, grade, readable)
    p = torch.sigmoid(logits[:3]).numpy().ravel()
    y = np.array([[0, 0], [1, 1], [1, 0]]).ravel()   # grade >= 2, grade >= 3
    assert got.item() == pytest.approx(log_loss(y, p, labels=[0, 1]), rel=1e-5)
    none = severity_loss(logits[3:].requires_grad_(), grade[3:], readable[3:])
    assert none.item() == 0.0 and none.requires_grad   # still in the graph: DDP sees the head used


def test_the_severity_head_reads_detached_features_and_starts_without_a_preference():
    torch.manual_seed(0)
    net = LandmarkNet("resnet10t", 16)
    pts, frac, read, sev = net(torch.randn(3, 1, 32, 32))
    np.testing.assert_allclose(torch.sigmoid(sev).detach().numpy(), 0.5)
    sev.sum().backward()
    touched = {n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert touched == {"severity.weight", "severity.bias"}


def test_a_checkpoint_written_before_the_severity_head_loads_with_its_prior(tmp_path):
    cfg = config.resolve("vertebra-demo", overrides=config.parse_set(TINY))
    torch.manual_seed(0)
    net = FAMILIES.of(cfg).step("build")(cfg)
    del net.landmarks.severity
    old = checkpoint.save(tmp_path / "old.ckpt", net, cfg, force=True)
    assert not any("severity" in k for k in checkpoint.load(old)["state_dict"])
    loaded = load_model(old)
    assert loaded.landmarks.severity.weight.abs().sum().item() == 0
    assert loaded.landmarks.severity.bias.tolist() == [SEVERITY_PRIOR, SEVERITY_PRIOR]
    assert torch.equal(loaded.landmarks.readable.weight, net.landmarks.readable.weight)


def test_grading_is_validated_and_said_in_the_metrics():
    with pytest.raises(config.ConfigError, match="vertebra.grading"):
        config.resolve("vertebra-demo", overrides=config.parse_set(["vertebra.grading=learned"]))
    assert config.resolve("vertebra-demo").vertebra.grading == "rules"
    assert reading("rules")["grading"] == "rules" and "severity" in reading("head")["grade_and_type"]


class Heads(torch.nn.Module):
    """A landmark network whose fracture logit is log(3) for every crop."""

    def forward(self, crops):
        q = torch.tensor([[-0.2, -0.2], [0, -0.2], [0.2, -0.2], [-0.2, 0.2], [0, 0.2], [0.2, 0.2]])
        n = len(crops)
        return q.expand(n, 6, 2).clone(), torch.full((n,), float(np.log(3.0))), torch.full((n,), 6.0), torch.zeros(n, 2)


def test_the_training_prior_lowers_the_fracture_logit_by_log_pos_weight(tmp_path):
    from vfa.config import VertebraConfig
    from vfa.inference.vertebra import place_points

    model = torch.nn.Module()
    model.landmarks, model.pos_weight = Heads(), 6.0
    img, found = torch.zeros(1, 1, 64, 32), [(np.array([[16.0, 20.0], [16.0, 44.0]]), np.array([0, 1]))]
    (_, balanced, _, _), = place_points(model, img, found, VertebraConfig(crop_size=16))
    (_, training, _, _), = place_points(model, img, found, VertebraConfig(crop_size=16, fracture_prior="training"))
    np.testing.assert_allclose(balanced, 0.75, rtol=1e-6)          # odds 3
    np.testing.assert_allclose(training, 1 / 3, rtol=1e-6)         # odds 3 / 6 = 0.5: P = 1/3
    del model.pos_weight                                            # no weight stored: w = 1, P as trained
    (_, none, _, _), = place_points(model, img, found, VertebraConfig(crop_size=16, fracture_prior="training"))
    np.testing.assert_allclose(none, 0.75, rtol=1e-6)


def test_a_loaded_checkpoint_carries_its_class_weight(tmp_path):
    cfg = config.resolve("vertebra-demo", overrides=config.parse_set(TINY))
    net = FAMILIES.of(cfg).step("build")(cfg)
    path = checkpoint.save(tmp_path / "w.ckpt", net, cfg, force=True, pos_weight=27.5)
    assert load_model(path).pos_weight == 27.5
    with pytest.raises(config.ConfigError, match="fracture_prior"):
        config.resolve("vertebra-demo", overrides=config.parse_set(["vertebra.fracture_prior=uniform"]))
