PYTHONPATH=. python bench/ew.py --rows 16384 --cols 2048 --only layer_norm fwd ax0,layer_norm bwd ax0,batch_norm fwd,batch_norm bwd
