PYTHONPATH=. python bench/rnn.py --quick --out /root/out
