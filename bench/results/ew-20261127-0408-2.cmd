PYTHONPATH=. python bench/ew.py --rows 262144 --cols 128 --only layer_norm fwd ax0,layer_norm bwd ax0,batch_norm fwd,batch_norm bwd,layer_norm fwd ax0 +gain,layer_norm bwd ax0 +gain
