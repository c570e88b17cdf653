-- A POST with a 1 KiB body, for cpu.sh and ab.sh: CPU_WRK_ARGS="-s bench/post.lua".
wrk.method = "POST"
wrk.body = string.rep("x", 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
