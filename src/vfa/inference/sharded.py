"""`vfa predict` over several processes, GPUs or nodes, on Lightning's `Trainer.predict`.

Lightning launches the processes (devices=N) or finds them (torchrun, SLURM) and gives each rank
its share of the files through its distributed sampler. Each rank appends its rows, with their
position in the input list, to OUT.partial.rankR after every batch (a prediction writer); at the
end rank 0 merges the shards into OUT.partial in input order, dropping the duplicates the sampler
pads with, and finishes OUT as a single-process run does. A killed sharded job resumes like a
single one: rank 0 first folds any shards left behind into OUT.partial. Every merge puts the new
rows among those already there by input position, so a resumed run's table is in input order too.
Files that fail to decode (up front, or later in a rank's loader) are gathered from every rank into
rank 0's OUT_skipped.csv.
"""
from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from vfa.data.samples import DataError
from vfa.data.stream import FileViews, check_files, default_workers, view_loader
from vfa.inference import output
from vfa.inference.archive import Summary, files_to_do, finish, job_record, out_path
from vfa.inference.engine import Scorer, batch_rows, public_files
from vfa.inference.predict import prepare_job, model_threshold, output_rows
from vfa.runs import is_secondary_rank


def shard_path(part: Path, rank: int) -> Path:
    return part.with_name(f"{part.name}.rank{rank}")


def shards(part: Path) -> list[Path]:
    return sorted(part.parent.glob(part.name + ".rank*"))


def _gather(items: list, world: int) -> list:
    """Every rank's `items`, concatenated (a collective: every rank must call it)."""
    import torch.distributed as dist

    if world == 1 or not dist.is_initialized():
        return list(items)
    gathered = [None] * world
    dist.all_gather_object(gathered, items)
    return [x for part in gathered for x in part]


class _Predict(L.LightningModule):
    def __init__(self, ens, paths, part, settings: dict):
        super().__init__()
        self.members = torch.nn.ModuleList(ens.members)  # Lightning moves them to the rank's device
        self.ens, self.paths, self.part, self.s = ens, paths, part, settings
        self.scorer, self.skipped, self.late, self.before = None, [], [], 0

    def positions(self) -> dict[str, int]:
        """{file column value: input position}: where merged rows go in OUT.partial."""
        return {f: i for i, f in enumerate(public_files(self.paths, self.s["keep_identifiers"]))}

    def predict_dataloader(self):
        """Called once the processes are up: agree on what is left to do, check it, share the work."""
        s, strategy = self.s, self.trainer.strategy
        rank, world = self.trainer.global_rank, self.trainer.world_size
        if rank == 0:
            output.merge_shards(self.part, shards(self.part), self.positions())
        strategy.barrier()
        # only rank 0 writes OUT.partial (and cuts a torn last row); the others just read it
        todo, stale, self.before = files_to_do(self.paths, output.done_rows(self.part, repair=rank == 0),
                                         s["keep_identifiers"])
        if rank == 0 and stale:
            output.drop_rows(self.part, stale)
        mine = todo[rank::world]
        bad = [(mine[i], r) for i, r in check_files([self.paths[i] for i in mine], self.ens.config.data.frame,
                                                    self.ens.config.data.min_side, s["workers"], rank == 0)]
        bad = sorted(_gather(bad, world))
        self.skipped = [(self.paths[i], r) for i, r in bad]
        if self.skipped and s["on_bad_file"] == "error":
            raise DataError(f"{len(self.skipped)} unusable file(s) among the inputs, e.g. "
                            f"{self.skipped[0][0]}: {self.skipped[0][1]} (use --on-bad-file skip)")
        bad_pos = {i for i, _ in bad}
        good = [i for i in todo if i not in bad_pos]
        self.scorer = Scorer(self.ens, s["backend"], max(1, len(good) // world), [self.paths[i] for i in good[:64]],
                             s["tta"], s["tta_preset"], s["seed"])
        strategy.barrier()
        return view_loader(FileViews([self.paths[i] for i in good], self.scorer.transforms, good),
                           s["batch_size"], s["workers"])

    def predict_step(self, batch, batch_idx):
        self.late += [(self.paths[p], reason) for p, reason in batch[4]]  # fine when checked, not now
        if not batch[1]:
            return None
        s = self.s
        rows = batch_rows(self.scorer, batch, self.paths.__getitem__)
        table = output_rows(rows, self.scorer.kinds(), s["thr"], s["score"], s["id_map"], s["id_regex"],
                            s["keep_identifiers"])
        table.insert(0, "position", rows["position"].to_numpy())
        return table


class _ShardWriter(BasePredictionWriter):
    def __init__(self, part: Path):
        super().__init__(write_interval="batch")
        self.part, self.writer = part, None

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        if prediction is None:
            return
        if self.writer is None:
            self.writer = output.RowWriter(shard_path(self.part, trainer.global_rank))
        self.writer.write(prediction)

    def on_predict_end(self, trainer, pl_module):
        if self.writer is not None:
            self.writer.close()
        late = _gather(pl_module.late, trainer.world_size)  # also the barrier: every shard complete
        if trainer.global_rank == 0:
            pl_module.skipped += sorted(late)


def predict_sharded(model, inputs, out, trainer: dict, force: bool = False, resume: bool = False, tta: int = 0,
                    tta_preset: str = "auto", seed: int = 0, id_regex=None, score: str = "raw", batch_size: int = 16,
                    workers: int | None = None, on_bad_file: str = "skip", progress: bool = False, log=None,
                    id_column=None, keep_identifiers: bool = False, backend: str = "auto", device: str = "auto",
                    threshold="model") -> Summary | None:
    """`predict_to_file` over the processes Lightning runs (`trainer`: devices, num_nodes, strategy,
    accelerator). Returns the Summary on rank 0 and None on the other ranks."""
    from vfa.runs import lock

    t0 = time.perf_counter()
    secondary = is_secondary_rank()
    out = out_path(out, model, inputs)
    ens, paths, id_map = prepare_job(model, inputs, tta, score, batch_size, workers, "cpu", id_column, on_bad_file)
    thr = model_threshold(ens, threshold)
    part = output.partial_path(out)
    settings = dict(thr=thr, score=score, id_map=id_map, id_regex=id_regex, keep_identifiers=keep_identifiers,
                    tta=tta, tta_preset=tta_preset, seed=seed, backend=backend, batch_size=batch_size,
                    on_bad_file=on_bad_file,
                    workers=default_workers(len(paths), batch_size) if workers is None else workers)
    accel = trainer.get("accelerator", "cpu" if device == "cpu" else "auto")
    pl_trainer = L.Trainer(accelerator=accel, devices=trainer.get("devices", 1),
                           num_nodes=trainer.get("num_nodes", 1), strategy=trainer.get("strategy", "ddp"),
                           logger=False, enable_progress_bar=progress and not secondary,
                           enable_checkpointing=False, callbacks=[_ShardWriter(part)], precision="32-true",
                           enable_model_summary=False)
    module = _Predict(ens, paths, part, settings)
    if secondary:
        pl_trainer.predict(module, return_predictions=False)
        return None
    job = job_record(ens, tta, tta_preset, seed, score, threshold, id_regex, id_column, keep_identifiers)
    with lock(out):
        output.start(out, job, force, resume)
        pl_trainer.predict(module, return_predictions=False)
        if pl_trainer.global_rank != 0:  # a launcher made this process a secondary rank
            return None
        summary = Summary(out, before=module.before, skipped=module.skipped, backend=module.scorer.backend)
        summary.now = output.merge_shards(part, shards(part), module.positions())
        finish(summary, part, keep_identifiers, log or (lambda m: None))
    summary.seconds = time.perf_counter() - t0
    return summary
