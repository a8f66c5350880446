"""DistributedDataParallel with BlockSparseLinear: a 2-process data-parallel run (gloo on the CPU,
NCCL on 2 GPUs) whose gradients and trained weights match one process training on the whole batch.

Standalone: ``python tests/test_ddp.py --backend nccl`` (or gloo) prints the largest differences.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch") if __name__ != "__main__" else __import__("torch")

import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

# NVLink multicast stays off on shared hosts (it can take the GPUs down); children inherit these
os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")

WORLD = 2
STEPS = 3
BATCH_PER_RANK = 13  # ragged on purpose


def _model(device):
    from cusparseblocks.adapters.torch import BlockSparseLinear

    rng = np.random.default_rng(1234)
    mask1 = rng.random((4, 6)) < 0.5
    mask1[0, 0] = True
    mask2 = rng.random((6, 2)) < 0.6
    mask2[0, 0] = True
    torch.manual_seed(0)
    model = torch.nn.Sequential(BlockSparseLinear(mask1, 16), torch.nn.ReLU(), BlockSparseLinear(mask2, 16))
    return model.to(device)


def _data(device):
    g = torch.Generator().manual_seed(99)
    x = torch.randn(WORLD * BATCH_PER_RANK, 64, generator=g)
    t = torch.randn(WORLD * BATCH_PER_RANK, 32, generator=g)
    return x.to(device), t.to(device)


def _train(model, x, t, steps):
    """SGD on mean-squared error; returns the first step's gradients and the final parameters (CPU)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    first = None
    for step in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), t)
        loss.backward()
        if step == 0:
            first = [p.grad.detach().cpu().double() for p in model.parameters()]
        opt.step()
    return first, [p.detach().cpu().double() for p in model.parameters()]


def _worker(rank, backend, port, path):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group(backend, rank=rank, world_size=WORLD)
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
            device = torch.device("cuda", rank)
        else:
            device = torch.device("cpu")
        model = _model(device)
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank] if backend == "nccl" else None)
        x, t = _data(device)
        shard = slice(rank * BATCH_PER_RANK, (rank + 1) * BATCH_PER_RANK)
        grads, params = _train(ddp, x[shard], t[shard], STEPS)
        torch.save({"grads": grads, "params": params}, f"{path}.{rank}")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_and_compare(backend: str) -> dict:
    """Train with DDP on WORLD processes and on one; return the largest relative differences."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ddp")
        mp.spawn(_worker, args=(backend, _free_port(), path), nprocs=WORLD, join=True)
        ranks = [torch.load(f"{path}.{r}") for r in range(WORLD)]
    device = torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")
    grads, params = _train(_model(device), *_data(device), STEPS)

    def rel(a, b):
        return max(float((x - y).norm() / y.norm().clamp(min=1e-30)) for x, y in zip(a, b))

    return {
        "grads_vs_single": max(rel(r["grads"], grads) for r in ranks),
        "params_vs_single": max(rel(r["params"], params) for r in ranks),
        "ranks_agree": rel(ranks[1]["params"], ranks[0]["params"]),
        "grads_nonzero": min(float(g.abs().max()) for g in grads),
    }


def _check(result):
    assert result["grads_nonzero"] > 0
    assert result["grads_vs_single"] < 1e-5, result
    assert result["params_vs_single"] < 1e-5, result
    assert result["ranks_agree"] == 0.0, result  # DDP keeps replicas bit-identical


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed gloo")
def test_ddp_cpu_gloo():
    _check(run_and_compare("gloo"))


@pytest.mark.gpu
def test_ddp_two_gpus_nccl():
    if torch.cuda.device_count() < WORLD or not dist.is_nccl_available():
        pytest.skip(f"needs {WORLD} GPUs and NCCL, found {torch.cuda.device_count()} GPUs")
    _check(run_and_compare("nccl"))


if __name__ == "__main__":
    import argparse

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["gloo", "nccl"], default="nccl")
    result = run_and_compare(parser.parse_args().backend)
    for k, v in result.items():
        print(f"{k:18s} {v:.3e}")
    _check(result)
    print("DDP gradients and weights match the single-process run")
