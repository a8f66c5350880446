CONV_VARIANTS=wst4:256,wtp:16:run1 PYTHONPATH=. python bench/conv.py --batch 64
