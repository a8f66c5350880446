PYTHONPATH=. python bench/small_diag.py   # commit 2cf5e17 (small.ready request 1)
