CONV_VARIANTS=wst4:256,halo:256x4 PYTHONPATH=. python bench/conv.py --batch 64
