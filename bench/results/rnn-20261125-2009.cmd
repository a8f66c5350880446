PYTHONPATH=. python bench/rnn.py --quick
