"""A closed-loop HTTP/1.1 load client that reports latency percentiles, for the hedging
row of docs/benchmarks.md: python3 bench/latency.py URL CONNECTIONS SECONDS.
Each connection (a thread with one keep-alive connection) sends GETs back to back.
Used instead of wrk there because wrk's latency distribution did not match the
throughput it measured against a backend that stalls some requests (wrk said p75 98 ms
for a server whose every connection answered 95% of requests in 2.5 ms; this client,
and one request at a time, both showed the 2.5 ms). Prints: requests, req/s, p50, p90,
p99, p99.9 in ms, and non-2xx answers.
A `{n}` in the URL's path is replaced by a number counting up over all connections, so that
every request asks for a new path (the caching rows: every request a miss). A HOST
environment variable sets the Host header."""
import http.client
import itertools
import os
import sys
import threading
import time
from urllib.parse import urlsplit

url = urlsplit(sys.argv[1])
CONNS, SECS = int(sys.argv[2]), float(sys.argv[3])
path = url.path or "/"
lat, bad = [], [0]
lock = threading.Lock()
counter = itertools.count(1)
headers = {"Host": os.environ["HOST"]} if "HOST" in os.environ else {}


def run():
    c = http.client.HTTPConnection(url.hostname, url.port)
    mine, errors = [], 0
    end = time.perf_counter() + SECS
    while time.perf_counter() < end:
        t = time.perf_counter()
        c.request("GET", path.replace("{n}", str(next(counter))), headers=headers)
        r = c.getresponse()
        r.read()
        mine.append((time.perf_counter() - t) * 1000)
        errors += not 200 <= r.status < 300
    with lock:
        lat.extend(mine)
        bad[0] += errors


threads = [threading.Thread(target=run) for _ in range(CONNS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(len(lat) * p))]
print(f"requests={len(lat)} req/s={len(lat) / SECS:.0f} p50={q(0.5):.2f}ms p90={q(0.9):.2f}ms "
      f"p99={q(0.99):.2f}ms p99.9={q(0.999):.2f}ms non2xx={bad[0]}")
