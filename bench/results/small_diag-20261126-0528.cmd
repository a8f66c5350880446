PYTHONPATH=. python bench/small_diag.py --densities (see bench/NOTES.md, small.ready request 1)
