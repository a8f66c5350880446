PYTHONPATH=. python bench/small_diag.py --densities 0.5,0.2,0.1,0.05,0.02   # commit c9656fd (request 3, updated)
