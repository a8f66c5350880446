CONV_VARIANTS=wst4:256,wss PYTHONPATH=. python bench/conv.py --batch 64
