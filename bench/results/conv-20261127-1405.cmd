CONV_VARIANTS=wst4:256,wtp,wtp:32:dbg1,wtp:32:dbg2,wtp:32:dbg3,wtp:32:dbg4,wtp:32:dbg7 PYTHONPATH=. python bench/conv.py --batch 64
