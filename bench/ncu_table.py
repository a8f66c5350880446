"""A short table from Nsight Compute's raw CSV (``ncu --csv --page raw``, or the same with ``-i REPORT``).

Run: python bench/ncu_table.py RAW.csv [label ...]   (labels name the profiled launches in order; default:
bench/profile_ffma.py's SUITE). Prints the metrics of METRICS that the report holds, one row per launch.
"""

import csv
import sys

# (column title, metric, scale)
METRICS = [
    ("us", "gpu__time_duration.sum", 1e-3),
    ("fma%", "sm__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active", 1),
    ("ldgsts M", "smsp__inst_executed_op_ldgsts.sum", 1e-6),
    ("L1 ldgsts req M", "l1tex__t_requests_pipe_lsu_mem_global_op_ldgsts.sum", 1e-6),
    ("L1 ldgsts sect M", "l1tex__t_sectors_pipe_lsu_mem_global_op_ldgsts.sum", 1e-6),
    ("xbar2l1 sect M", "l1tex__m_xbar2l1tex_read_sectors.sum", 1e-6),
    ("L2 tex rd req M", "lts__t_requests_srcunit_tex_op_read.sum", 1e-6),
    ("L2 tex rd sect M", "lts__t_sectors_srcunit_tex_op_read.sum", 1e-6),
    ("hit M", "lts__t_sectors_srcunit_tex_op_read_lookup_hit.sum", 1e-6),
    ("miss M", "lts__t_sectors_srcunit_tex_op_read_lookup_miss.sum", 1e-6),
    ("fabric sect M", "lts__t_sectors_srcunit_ltcfabric.sum", 1e-6),
    ("dram rd MB", "dram__bytes_read.sum", 1e-6),
    ("issue%", "smsp__issue_active.avg.pct_of_peak_sustained_active", 1),
    ("L2 sect%", "lts__t_sectors.avg.pct_of_peak_sustained_elapsed", 1),
    ("stall lsb", "smsp__average_warp_latency_issue_stalled_long_scoreboard.ratio", 1e-3),
    ("stall bar", "smsp__average_warp_latency_issue_stalled_barrier.ratio", 1e-3),
]


# ncu's units -> ns / bytes
BASE = {"nsecond": 1.0, "usecond": 1e3, "msecond": 1e6, "second": 1e9, "byte": 1.0, "Kbyte": 1e3,
        "Mbyte": 1e6, "Gbyte": 1e9, "Kinst": 1e3, "Minst": 1e6, "Ksector": 1e3, "Msector": 1e6}


def _number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def table(path, labels):
    with open(path, newline="") as f:
        lines = f.read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('"ID"'))
    rows = list(csv.reader(lines[start:]))
    header, body = rows[0], [r for r in rows[1:] if r and r[0].strip().isdigit()]
    units = rows[1] if len(rows) > 1 and not rows[1][0].strip().isdigit() else [""] * len(header)
    col = {name: i for i, name in enumerate(header)}
    keep = [(title, col[m], scale, units[col[m]]) for title, m, scale in METRICS if m in col]
    out = [["launch", "kernel"] + [t for t, _, _, _ in keep]]
    for k, r in enumerate(body):
        name = r[col["Kernel Name"]] if "Kernel Name" in col else "?"
        cells = []
        for _, i, scale, unit in keep:
            v = _number(r[i])
            if v is not None:  # to base units (ns, byte, count), then the column's scale
                v *= BASE.get(unit, 1.0)
            cells.append("-" if v is None else f"{v * scale:.4g}")
        out.append([labels[k] if k < len(labels) else str(k), name.split("(")[0][:40]] + cells)
    widths = [max(len(r[i]) for r in out) for i in range(len(out[0]))]
    for r in out:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    labels = sys.argv[2:]
    if not labels:
        sys.path.insert(0, "bench")
        from profile_ffma import SUITE

        labels = [f"{op} d={d} {v or 'default'}" for op, d, v in SUITE]
    elif labels == ["updat"]:
        sys.path.insert(0, "bench")
        from profile_updat import LABELS as labels
    table(sys.argv[1], labels)
