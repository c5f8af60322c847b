"""Two CPU processes (gloo) train a tiny MS R-CNN under DistributedDataParallel, one rank with
no positive RoIs at all: no hang, no unused-parameter error, the same loss keys on both ranks,
and identical parameters afterwards (the gradients were all-reduced)."""

import json
import math
import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

WORLD_SIZE, STEPS, TIMEOUT_S = 2, 3, 120


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, port, out_dir):
    import torch.distributed as dist
    from conftest import make_batch, tiny_cfg
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
        cfg = tiny_cfg("MaskScoringROIHeads")
        # Unit-variance inputs: with the default PIXEL_STD of 1 a random tiny model sees values
        # up to 255 and diverges within a few SGD steps (NaN proposals), whatever DDP does.
        cfg.MODEL.PIXEL_STD = [57.0, 57.0, 57.0]
        model = build_model(cfg)
        model.train()
        # As Detectron2's create_ddp_model: find_unused_parameters=False, no buffer broadcast.
        ddp = DistributedDataParallel(model, broadcast_buffers=False)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.002, momentum=0.9)
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save(initial, os.path.join(out_dir, f"initial_{rank}.pt"))
        # Rank 0 has objects; rank 1's images have none, so it has no positive RoI.
        instances = (2, 1) if rank == 0 else (0, 0)
        history = []
        with EventStorage(0) as storage:
            for step in range(STEPS):
                batch = make_batch("polygon", num_instances=instances, seed=10 * step + rank)
                losses = ddp(batch)
                total = sum(losses.values())
                optimizer.zero_grad()
                total.backward()
                optimizer.step()
                storage.step()
                history.append({k: float(v.detach()) for k, v in losses.items()})
        params = {k: v.detach() for k, v in model.state_dict().items()}
        torch.save(params, os.path.join(out_dir, f"params_{rank}.pt"))
        with open(os.path.join(out_dir, f"losses_{rank}.json"), "w") as f:
            json.dump(history, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_with_a_rank_without_positives(tmp_path):
    # Spawned workers import the test helpers from this folder.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH", "")]
    )
    context = mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=False)
    deadline = time.time() + TIMEOUT_S
    try:
        while not context.join(timeout=1):  # raises if a worker raised
            if time.time() > deadline:
                pytest.fail(f"DDP training did not finish within {TIMEOUT_S} s (hang?)")
    finally:
        for p in context.processes:
            if p.is_alive():
                p.kill()
                p.join()

    history = [json.loads((tmp_path / f"losses_{r}.json").read_text()) for r in range(2)]
    for step in range(STEPS):
        keys = [set(history[r][step]) for r in range(2)]
        assert keys[0] == keys[1] and {"loss_mask", "loss_maskiou"} <= keys[0]
        for r in range(2):
            assert all(math.isfinite(v) for v in history[r][step].values()), history[r][step]
        # No positives: zero mask losses, still part of the graph (else DDP would have failed).
        assert history[1][step]["loss_mask"] == 0.0 and history[1][step]["loss_maskiou"] == 0.0
        assert history[0][step]["loss_mask"] > 0.0

    params = [torch.load(tmp_path / f"params_{r}.pt") for r in range(2)]
    initial = [torch.load(tmp_path / f"initial_{r}.pt") for r in range(2)]
    assert params[0].keys() == params[1].keys()
    for k in params[0]:
        assert torch.equal(params[0][k], params[1][k]), k
        assert torch.equal(initial[0][k], initial[1][k]), k  # DDP broadcast rank 0's weights
    # The steps changed the weights everywhere gradients flow, the MaskIoU head included, so
    # the equality above is of trained, all-reduced weights.
    for k in ("roi_heads.maskiou_head.predictor.weight", "roi_heads.mask_head.predictor.weight",
              "backbone.bottom_up.stem.conv1.weight"):  # fmt: skip
        assert not torch.equal(params[0][k], initial[0][k]), k
