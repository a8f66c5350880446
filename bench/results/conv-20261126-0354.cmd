PYTHONPATH=. python bench/conv.py --batch 64 --batch 8
