"""`vfa predict`'s entry: one process, or sharded over several (Lightning is imported only then)."""
from __future__ import annotations

from vfa.config import ConfigError, parse_set
from vfa.inference.archive import Summary, predict_to_file, wants_shards


def predict_archive(model, inputs, out, sets=(), dicom_out=None, **kwargs) -> Summary | None:
    """`predict_to_file` in this process, or `vfa.inference.sharded.predict_sharded` over several
    when `sets` (--set trainer.KEY=VALUE items) or a launcher's WORLD_SIZE asks for more than one.
    `dicom_out`: a folder for DICOM SR + SC per input (vfa.inference.dicom_results), checked before
    any scoring and written after the predictions. Returns None on secondary ranks."""
    finish = None
    if dicom_out:
        from vfa.inference.dicom_results import for_predict

        finish = for_predict(model, inputs, dicom_out, kwargs)
    summary = _predict(model, inputs, out, sets, **kwargs)
    if finish is not None and summary is not None:
        finish(summary.out)
    return summary


def _predict(model, inputs, out, sets=(), **kwargs) -> Summary | None:
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
