PYTHONPATH=. python bench/keep_diag.py --prof --shapes 131072x256,65536x512,262144x128 --settings keep il0,keep il1
