CONV_VARIANTS=wst4:256,wss,wss:128,wss:256:run1 PYTHONPATH=. python bench/conv.py --batch 64
