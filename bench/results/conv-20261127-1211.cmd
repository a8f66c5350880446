CONV_VARIANTS=wst4:256,wide,wide:run2 PYTHONPATH=. python bench/conv.py --batch 64  # on branch wip-wide (conv_fprop_wide)
