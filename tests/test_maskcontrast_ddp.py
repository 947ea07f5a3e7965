"""MaskContrast under a 2-process CPU ``ddp_spawn``: gathered prototypes keep every queue identical.

A separate file because spawning two Lightning processes alone takes ~30-60 s on 2 shared cores.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from usgs.methods.contrastive import all_gather_cat
from usgs.methods.maskcontrast import MaskContrast
from usgs.run.prior_auto import ensure_priors


class QueueAgreement(pl.Callback):
    """Writes, from rank 0, whether every process ended training with the same prototype queue."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer: pl.Trainer, pl_module: MaskContrast) -> None:
        queues = all_gather_cat(pl_module.queue.queue.flatten().unsqueeze(0))
        pointers = all_gather_cat(pl_module.queue.pointer.view(1))
        if trainer.is_global_zero:
            same = bool(torch.equal(queues[0], queues[1])) and len(set(pointers.tolist())) == 1
            with open(self.path, "w") as f:
                f.write(f"{queues.shape[0]} {same} {int(pointers[0])}")


def test_ddp_spawn_two_cpu_processes_share_the_queue(make_cfg, tmp_path) -> None:
    from hydra.utils import instantiate

    cfg = make_cfg(["experiment=maskcontrast", "data.image_size=32", "data.num_train=16", "data.batch_size=4",
                    "model.net.head_channels=16", "model.queue_size=32"])
    ensure_priors(cfg)  # experiment=maskcontrast reads the saliency_unsup prior (no oracle saliency)
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")
    out = tmp_path / "queue.txt"
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=2, logger=False,
                         enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, callbacks=[QueueAgreement(str(out))])
    trainer.fit(model, datamodule=datamodule)
    world, same, pointer = out.read_text().split()
    # 2 steps x 2 processes x 4 images (each shapes image has an object): 16 prototypes queued everywhere
    assert world == "2" and same == "True" and pointer == "16"
