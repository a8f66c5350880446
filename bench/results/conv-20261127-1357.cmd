CONV_VARIANTS=wst4:256,wtp,wtp:16 PYTHONPATH=. python bench/conv.py --batch 64
