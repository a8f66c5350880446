PYTHONPATH=. python bench/keep_diag.py --prof --shapes 131072x256,65536x512,8192x4096 --settings keep always,keep mix0
