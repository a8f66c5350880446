PYTHONPATH=. python bench/stream_probe.py 
