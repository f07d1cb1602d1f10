"""Per family: a 2-step end-to-end run through train(cfg), and a real 2-process gloo DDP step on Swin."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from masksub_exp.config import MaskSubConfig, RecipeConfig
from masksub_exp.losses import build_loss
from masksub_exp.models import MaskSubModel
from masksub_exp.step import train_step
from masksub_exp.subbranch import build_subbranch
from masksub_exp.train import train

from .conftest import compose_cfg, smoke_overrides
from .test_families import inputs, make

FAMILY_RUNS = {
    "vit": dict(model="vit_micro"),
    "swin": dict(model="swin_micro", data__img_size=64),
    "cnn": dict(model="resnet_micro", data__img_size=64),
    "bert": dict(model="bert_micro", data="synthetic_text"),
    "vit-droppath": dict(model="vit_micro", masksub="droppath"),
    "bert-dropout": dict(model="bert_micro", data="synthetic_text", masksub="dropout"),
}


@pytest.mark.parametrize("name", list(FAMILY_RUNS))
def test_two_step_smoke_run(name: str, tmp_path: Path) -> None:
    summary = train(compose_cfg(smoke_overrides(train__max_steps=2, train__log_every=1, train__batch_size=8,
                                                **FAMILY_RUNS[name]), tmp_path / "run"))
    assert summary["step"] == 2
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in lines if r["kind"] == "train"]
    assert len(train_lines) == 2
    assert all(math.isfinite(r["loss_main"]) and math.isfinite(r["loss_sub"]) for r in train_lines)
    assert 0.0 <= summary["top1"] <= 100.0
    correct = summary["top1"] * 64 / 100  # the 64 synthetic validation samples, whatever the family
    assert abs(correct - round(correct)) < 1e-6, f"top-1 {summary['top1']} is not k/64"


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        net = make("swin").train()
        model = MaskSubModel(net, build_subbranch(net, MaskSubConfig(mode="mask", ratio=0.5)))
        # no find_unused_parameters: the mask token is used by the (only synchronised) sub backward
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        torch.manual_seed(100 + rank)  # different masks and data per rank
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loss = build_loss(RecipeConfig(), mixing=False)
        for _ in range(2):
            x, y = inputs("swin", b=4) + rank, torch.arange(4) % 5
            train_step(ddp, (x, y), optimizer, loss, masksub=True, accum_steps=2)
        flat_params = torch.cat([p.detach().flatten() for p in model.parameters()])
        flat_grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        torch.save({"params": flat_params, "grads": flat_grads}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_two_process_swin_masksub_step(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert torch.equal(r0["grads"], r1["grads"]), "gradients were not all-reduced"
    assert torch.equal(r0["params"], r1["params"]), "replicas diverged"
    assert r0["grads"].abs().sum() > 0
