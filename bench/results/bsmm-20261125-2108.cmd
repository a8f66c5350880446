bash bench/device_bsmm.sh   # = PYTHONPATH=. python bench/bsmm.py (+ GPU tests, memcheck, racecheck of bench/sanitize_bsmm.py); H100 80GB HBM3
