PYTHONPATH=. python bench/rnn.py --sweep --budget 160 --out /tmp/r2
