"""Draw docs/layouts.png: one panel per layout generator (run: python docs/layouts_figure.py)."""

from pathlib import Path

from matplotlib.figure import Figure

from cusparseblocks import layouts

PANELS = [
    ("random(32, 0.15,\nkeep_diagonal=True)", layouts.random(32, 32, 0.15, keep_diagonal=True, seed=0)),
    ("watts_strogatz(32, k=4, p=0.1)", layouts.watts_strogatz(32, 4, 0.1, seed=0)),
    ("barabasi_albert(32, m=2)", layouts.barabasi_albert(32, 2, seed=0)),
    ("block_diagonal(32, groups=4)", layouts.block_diagonal(32, 4)),
    ("block_diagonal(32, groups=4,\nshuffle=True)", layouts.block_diagonal(32, 4, shuffle=True)),
    ("channel_random(32, 16,\nfraction=0.15)", layouts.channel_random(32, 16, 0.15, seed=0)),
]


def main(path=Path(__file__).with_name("layouts.png")):
    fig = Figure(figsize=(15, 3.2), dpi=80)
    for i, (title, mask) in enumerate(PANELS):
        ax = fig.add_subplot(1, len(PANELS), i + 1)
        ax.imshow(mask, cmap="Greys", interpolation="nearest")
        ax.set_title(f"{title}\ndensity {layouts.density(mask):.2f}", fontsize=9)
        ax.set_xlabel("output block", fontsize=8)
        ax.set_ylabel("input block", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
