"""Two bench/bsmm_gmma.py logs of one run side by side: TFLOP/s of each (op, dtype, b, density, kernel) row
in OLD and NEW and their ratio. Run: python bench/cmp_rows.py OLD.log NEW.log"""

import sys


def rows(path):
    out = {}
    for line in open(path):
        p = line.split()
        if len(p) >= 7 and p[0] in ("fprop", "bprop", "updat"):
            out[tuple(p[:5])] = float(p[6])
    return out


def main(old, new):
    o, n = rows(old), rows(new)
    for k, v in n.items():
        print(*k, o.get(k, "-"), v, f"{v / o[k]:.3f}" if k in o else "")


if __name__ == "__main__":
    main(*sys.argv[1:3])
