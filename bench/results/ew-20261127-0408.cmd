PYTHONPATH=. python bench/ew.py --rows 131072 --cols 256 --only layer_norm fwd ax0,layer_norm bwd ax0,batch_norm fwd,batch_norm bwd,layer_norm fwd ax0 +gain,layer_norm bwd ax0 +gain
