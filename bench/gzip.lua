-- A client that accepts gzip, for cpu.sh against bench/compression.yaml:
-- CPU_WRK_ARGS="-s bench/gzip.lua" bench/cpu.sh 18092
wrk.headers["Accept-Encoding"] = "gzip"
