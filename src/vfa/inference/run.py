"""`vfa predict`'s entry: the model's family (vfa.registry.FAMILIES) refuses what it does not
support, then its predict step runs; the image family's in one process, or sharded over several
(Lightning is imported only then)."""
from __future__ import annotations

from vfa.config import ConfigError, parse_set
from vfa.inference.archive import Summary, predict_to_file, wants_shards


def predict_archive(model, inputs, out, sets=(), dicom_out=None, **kwargs) -> Summary | None:
    """The family's predict step for `model` (checkpoint(s) or an ensemble file). `sets` (--set
    trainer.KEY=VALUE items) or a launcher's WORLD_SIZE may ask for several processes.
    `dicom_out`: a folder for DICOM SR + SC per input (vfa.inference.dicom_results), checked before
    any scoring and written after the predictions. Returns None on secondary ranks."""
    from vfa.inference.ensemble import resolve_family

    family = resolve_family(model, "predict")
    family.refuse("predict", set=tuple(sets), **{k: kwargs.get(k) for k in ("tta", "score", "backend")})
    finish = None
    if dicom_out:
        from vfa.inference.dicom_results import for_predict

        finish = for_predict(model, inputs, dicom_out, dict(kwargs))
    summary = family.step("predict")(model, inputs, out, sets=sets, **kwargs)
    if finish is not None and summary is not None:
        finish(summary.out)
    return summary


def predict_images(model, inputs, out, sets=(), **kwargs) -> Summary | None:
    """The image family's predict step: `predict_to_file` in this process, or
    `vfa.inference.sharded.predict_sharded` over several."""
    parsed = parse_set(list(sets))
    unknown = [k for k in parsed if k != "trainer"]
    if unknown:
        raise ConfigError(f"vfa predict --set takes trainer.* keys (devices, num_nodes, strategy, accelerator), "
                          f"not {', '.join(unknown)}")
    trainer = parsed.get("trainer", {})
    if wants_shards(trainer.get("devices", 1), trainer.get("num_nodes", 1)):
        from vfa.inference.sharded import predict_sharded

        return predict_sharded(model, inputs, out, trainer=trainer, **kwargs)
    return predict_to_file(model, inputs, out, **kwargs)
