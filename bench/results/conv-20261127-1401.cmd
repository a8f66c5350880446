CONV_VARIANTS=wst4:256,wtp,wtp:32:run1,wtp:32:run2,wtp:16:run1,wtp:16:run2 PYTHONPATH=. python bench/conv.py --batch 64
