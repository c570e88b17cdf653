"""An HTTP/1.1 keep-alive upstream that answers every request after a delay, for the
aggregate and hedging rows of docs/benchmarks.md:
python3 bench/slow_upstream.py PORT DELAY_MS [STALL_PERCENT STALL_MS]
With STALL_PERCENT, that share of requests (chosen at random) waits STALL_MS instead."""
import asyncio
import random
import sys

PORT, DELAY = int(sys.argv[1]), int(sys.argv[2]) / 1000
STALL_SHARE = float(sys.argv[3]) / 100 if len(sys.argv) > 3 else 0.0
STALL = int(sys.argv[4]) / 1000 if len(sys.argv) > 4 else 0.0


async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            await asyncio.sleep(STALL if random.random() < STALL_SHARE else DELAY)
            body = f'{{"port":{PORT},"path":"{path}"}}'.encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", PORT, backlog=1024)
    async with server:
        await server.serve_forever()


asyncio.run(main())
