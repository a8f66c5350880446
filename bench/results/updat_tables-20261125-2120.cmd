PYTHONPATH=. python bench/updat_tables.py   # H100 80GB HBM3
