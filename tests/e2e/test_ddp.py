"""Two DDP workers (gloo) train exactly what one worker trains on the same global batch."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from switchsweep.platform.checkpoint import load_checkpoint
from switchsweep.trainers.data.batches import BatchStream, load_digits_tensors
from switchsweep.trainers.loop.trainer import train


def _worker(rank: int, world: int, port: int, cfg) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        train(cfg)
    finally:
        dist.destroy_process_group()


def test_batches_split_the_global_batch_between_ranks():
    images, labels = load_digits_tensors()
    one = BatchStream(images, labels, 16, seed=3)
    halves = [BatchStream(images, labels, 16, seed=3, rank=r, world_size=2) for r in range(2)]
    for step in (0, 5, 111, 112, 300):  # 112 batches per epoch: across an epoch boundary too
        x, y = one.batch(step)
        parts = [h.batch(step) for h in halves]
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)


@pytest.mark.parametrize("weighting", ["constant", "uw"])
def test_two_workers_match_one_worker_on_the_same_global_batch(tiny_cfg, tmp_path, weighting):
    tiny_cfg.train.steps = 3
    tiny_cfg.train.loss_weighting = weighting
    tiny_cfg.train.out_dir = str(tmp_path / "one")
    one = load_checkpoint(train(tiny_cfg).checkpoint)

    tiny_cfg.train.out_dir = str(tmp_path / "two")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, tiny_cfg), nprocs=2, join=True)
    two = load_checkpoint(tmp_path / "two" / "ckpt.pt")

    for ours, theirs in ((one["model"], two["model"]), (one["ema"]["model"], two["ema"]["model"])):
        for k, v in ours.items():
            if torch.is_tensor(v):
                torch.testing.assert_close(theirs[k], v, rtol=1e-4, atol=1e-5, msg=k)
    if weighting == "uw":  # its log-variances sit outside DDP: their gradients are all-reduced by hand
        assert one["weighting"]["uw.log_var"].abs().sum() > 0
        torch.testing.assert_close(two["weighting"]["uw.log_var"], one["weighting"]["uw.log_var"], rtol=1e-4, atol=1e-6)


def test_the_digits_are_scikit_learns_read_straight_from_its_file():
    from sklearn.datasets import load_digits

    images, labels = load_digits_tensors()
    digits = load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.float32
    torch.testing.assert_close(images, torch.from_numpy(digits.images).float().div(16).mul(2).sub(1).unsqueeze(1))
    assert torch.equal(labels, torch.from_numpy(digits.target).long())
