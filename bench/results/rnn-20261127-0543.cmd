PYTHONPATH=. python bench/rnn.py 
