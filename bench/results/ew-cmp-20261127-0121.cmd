# same run, twice each: the column ops at [8192, 4096] with the code of 97356bd (req_old/, its own compile cache) and of this session
(cd req_old && CUSPARSEBLOCKS_CACHE_DIR=/tmp/cbc-old PYTHONPATH=. python bench/ew.py --only 'layer_norm fwd ax0,layer_norm bwd ax0,batch_norm fwd,batch_norm bwd')
PYTHONPATH=. python bench/ew.py --only 'layer_norm fwd ax0,layer_norm bwd ax0,batch_norm fwd,batch_norm bwd'
# (bench/device_s12.sh cmp; req_d.sh of session 12)
