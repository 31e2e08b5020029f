"""`vfa predict`'s entry: one process, or sharded over several (Lightning is imported only then)."""
from __future__ import annotations

from vfa.config import ConfigError, parse_set
from vfa.inference.archive import Summary, predict_to_file, wants_shards


def predict_archive(model, inputs, out, sets=(), dicom_out=None, **kwargs) -> Summary | None:
    """`predict_to_file` in this process, or `vfa.inference.sharded.predict_sharded` over several
    when `sets` (--set trainer.KEY=VALUE items) or a launcher's WORLD_SIZE asks for more than one.
    `dicom_out`: a folder for DICOM SR + SC per input (vfa.inference.dicom_results), checked before
    any scoring and written after the predictions. Returns None on secondary ranks."""
    from vfa.models.loading import vertebra_model

    if (single := vertebra_model(model)) is not None:
        return _per_vertebra(single, inputs, out, sets, dicom_out, **kwargs)
    finish = None
    if dicom_out:
        from vfa.inference.dicom_results import for_predict

        finish = for_predict(model, inputs, dicom_out, dict(kwargs))
    summary = _predict(model, inputs, out, sets, **kwargs)
    if finish is not None and summary is not None:
        finish(summary.out)
    return summary


def _per_vertebra(model, inputs, out, sets, dicom_out, **kwargs) -> Summary:
    """A per-vertebra model's prediction (vfa.inference.vertebra), reported as a Summary."""
    import time

    from vfa.inference.vertebra import predict_vertebra_files

    if sets:
        raise ConfigError("a per-vertebra model runs in one process, without --set trainer.* (docs/vertebrae.md)")
    finish = None
    if dicom_out:
        from vfa.inference.dicom_results import for_predict

        finish = for_predict(model, inputs, dicom_out, dict(kwargs))
    keep = {k: kwargs.pop(k) for k in ("threshold", "batch_size", "on_bad_file", "keep_identifiers", "force",
                                       "device", "progress", "log", "workers") if k in kwargs}
    t0 = time.perf_counter()
    path = predict_vertebra_files(model, inputs, out, **keep, **kwargs)
    if finish is not None:
        finish(path)
    return Summary(out=path, now=sum(1 for _ in open(path)) - 1, backend="torch", seconds=time.perf_counter() - t0)


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
