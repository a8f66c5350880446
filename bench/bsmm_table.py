"""Markdown ratio tables from a bench/bsmm.py JSON: `python bench/bsmm_table.py bench/results/bsmm-*.json`.

`--variants`: one line per (op, dtype, b, density) instead: the default's TFLOP/s and × dense, then every
timed tile variant's TFLOP/s (a short table for comparing variants measured in the same run)."""

import json
import sys

TARGETS = {64: 0.6, 32: 0.6, 16: 0.4, 8: 0.25}


def _find(rows, system, r, n):
    for q in rows:
        if (q["system"], q["op"], q["dtype"], q["b"], q["density"], q["N"]) == (system, r["op"], r["dtype"], r["b"],
                                                                               r["density"], n):
            return q
    return None


def tables(path):
    rows = json.load(open(path))["rows"]
    out = ["| op | dtype | b | density | ours ms | TFLOP/s | × dense | target | met | torch BSR × dense | speed-up over "
           "torch BSR | × dense (graph) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["system"] != "cusparseblocks" or r["N"] != 4096:
            continue
        peer = _find(rows, "torch BSR (triton)" if r["dtype"] != "float32" else "torch BSR (cuSPARSE)", r, 4096)
        target = 0.8 if r["dtype"] == "float32" else TARGETS[r["b"]]
        peer_cols = f"{peer['x_dense']:.3f} | {peer['ms'] / r['ms']:.1f}×" if peer else "– | –"
        # the same ratio from the CUDA-graph time (GPU time alone; dense cuBLAS is GPU-bound at these sizes)
        graph = f"{r['x_dense'] * r['ms'] / r['ms_graph']:.3f}" if r.get("ms_graph") else "–"
        out.append(f"| {r['op']} | {r['dtype']} | {r['b']} | {r['density']} | {r['ms']:.3f} | {r['TFLOPs']:.0f} | "
                   f"{r['x_dense']:.3f} | {target} | {'yes' if r['x_dense'] >= target else 'no'} | {peer_cols} | "
                   f"{graph} |")
    out += ["", "| small batch N=32, K=M=12288, b=32 | dtype | density | ours ms | ours ms (graph) | × floor | "
                "× floor (graph) | dense cuBLAS × floor | torch BSR × floor |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["system"] != "cusparseblocks" or r["N"] != 32:
            continue
        dense = _find(rows, "dense cuBLAS", r, 32)
        peer = _find(rows, "torch BSR (triton)" if r["dtype"] != "float32" else "torch BSR (cuSPARSE)", r, 32)
        out.append(f"| fprop | {r['dtype']} | {r['density']} | {r['ms']:.4f} | {r['ms_graph']:.4f} | "
                   f"{r['x_floor']:.2f} | {r['x_floor_graph']:.2f} | {dense['x_floor']:.2f} | "
                   f"{peer['x_floor']:.1f} |" if peer else "– |")
    return "\n".join(out)


def variants(path):
    rows = json.load(open(path))["rows"]
    out = []
    for r in rows:
        if r["system"] != "cusparseblocks" or r["N"] != 4096:
            continue
        key = (r["op"], r["dtype"], r["b"], r["density"], r["N"])
        tiles = [f"{q['system'][15:-1]} {q['TFLOPs']:.1f}" for q in rows
                 if q["system"].startswith("cusparseblocks[") and q.get("TFLOPs") is not None
                 and (q["op"], q["dtype"], q["b"], q["density"], q["N"]) == key]
        out.append(f"{r['op']} {r['dtype']} b={r['b']} d={r['density']}: default {r['TFLOPs']:.1f} "
                   f"({r['x_dense']:.3f}x dense) | " + ", ".join(tiles))
    return "\n".join(out)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--variants"]
    print(variants(args[0]) if "--variants" in sys.argv else tables(args[0]))
