CONV_VARIANTS=wst4:256,wtp,wtp:16,wtp:32:dbg4 PYTHONPATH=. python bench/conv.py --batch 64
