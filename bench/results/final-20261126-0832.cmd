bash bench/device_s4.sh  # H100, integ@67fb574: every GPU test, check, bench/bsmm.py (bsmm-20261126-0837), sanitize_bsmm memcheck/racecheck
