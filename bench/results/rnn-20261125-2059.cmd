PYTHONPATH=. python bench/rnn.py --out /tmp/r1
