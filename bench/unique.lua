-- wrk: every request a new path (/miss/N, N counting up per thread), so that every
-- request of a cached route is a miss: bench/cache.sh's miss rows.
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", wrk.path .. n)
end
