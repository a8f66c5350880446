PYTHONPATH=. python bench/conv.py 
