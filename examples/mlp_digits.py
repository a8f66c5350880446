"""Train a small MLP on scikit-learn's digits (8×8 images, 10 classes; the data ships with sklearn):
a dense model against a wider block-sparse one with the same number of parameters.

    python examples/mlp_digits.py                 # CUDA if torch sees a GPU (CuPy kernels), else CPU
    python examples/mlp_digits.py --device cpu --epochs 40 --plot digits.png

dense:  64 → 128 → 128 → 10 (nn.Linear)
sparse: 64 → 256 → 256 → 10, the two hidden layers BlockSparseLinear (16×16 blocks, random layouts)
        with as many blocks as make the parameter count equal to the dense model's (within one block).
Needs: torch, scikit-learn, tqdm (matplotlib for --plot).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from cusparseblocks import layouts
from cusparseblocks.adapters.torch import BlockSparseLinear

BLOCK = 16


def dense_model(hidden: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def sparse_model(width: int, budget: int, seed: int) -> torch.nn.Module:
    """64 → width → width → 10 with block-sparse hidden layers holding ``budget`` parameters in all."""
    fixed = 2 * width + width * 10 + 10  # the two hidden biases and the dense readout
    blocks = max(2, round((budget - fixed) / BLOCK**2))  # weight blocks to share between the two layers
    grid1, grid2 = (64 // BLOCK) * (width // BLOCK), (width // BLOCK) ** 2
    first = max(1, min(grid1, round(blocks * grid1 / (grid1 + grid2))))  # same density in both layers
    lay1 = layouts.random(64 // BLOCK, width // BLOCK, first / grid1, keep_diagonal=True, seed=seed)
    lay2 = layouts.random(width // BLOCK, width // BLOCK, (blocks - int(lay1.sum())) / grid2,
                          keep_diagonal=True, seed=seed + 1)
    return torch.nn.Sequential(BlockSparseLinear(lay1, BLOCK), torch.nn.ReLU(),
                               BlockSparseLinear(lay2, BLOCK), torch.nn.ReLU(), torch.nn.Linear(width, 10))


def train(name, model, data, epochs, lr, batch, device, seed):
    x_train, y_train, x_test, y_test = data
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    curve = []
    bar = tqdm(range(epochs), desc=f"{name:6s}", unit="epoch")
    for _ in bar:
        model.train()
        order = torch.randperm(len(x_train), generator=gen).to(device)
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            loss = torch.nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item()
        curve.append(acc)
        bar.set_postfix(loss=f"{loss.item():.3f}", test_acc=f"{acc:.3f}")
    return curve


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=128, help="dense hidden width (sparse: twice that)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None, help="write test accuracy per epoch to this PNG")
    args = parser.parse_args()
    if args.hidden % BLOCK:
        parser.error(f"--hidden: expected a multiple of {BLOCK}, got {args.hidden}")

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.25,
                                                        random_state=args.seed, stratify=digits.target)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-3
    device = torch.device(args.device)
    data = (torch.tensor((x_train - mean) / std, device=device), torch.tensor(y_train, device=device),
            torch.tensor((x_test - mean) / std, device=device), torch.tensor(y_test, device=device))

    torch.manual_seed(args.seed)
    dense = dense_model(args.hidden)
    sparse = sparse_model(2 * args.hidden, n_params(dense), args.seed)
    print(f"digits: {len(x_train)} train / {len(x_test)} test images, device {device}")
    print(f"dense : {n_params(dense):6d} parameters  64 → {args.hidden} → {args.hidden} → 10")
    print(f"sparse: {n_params(sparse):6d} parameters  64 → {2 * args.hidden} → {2 * args.hidden} → 10, "
          f"hidden densities {sparse[0].layout.density:.2f} and {sparse[2].layout.density:.2f}")

    models = (("dense", dense), ("sparse", sparse))
    curves, seconds = {}, {}
    for name, model in models:
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        curves[name] = train(name, model, data, args.epochs, args.lr, args.batch, device, args.seed)
        seconds[name] = time.perf_counter() - start

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        for (name, model), curve in zip(models, curves.values()):
            ax.plot(range(1, len(curve) + 1), curve, label=f"{name} ({n_params(model)} params)")
        ax.set(xlabel="epoch", ylabel="test accuracy", title="digits: dense vs block-sparse MLP")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")

    print(f"\n{'model':8s} {'params':>7s} {'test acc':>9s} {'train s':>8s}")
    for name, model in models:
        print(f"{name:8s} {n_params(model):7d} {curves[name][-1]:9.4f} {seconds[name]:8.1f}")


if __name__ == "__main__":
    main()
