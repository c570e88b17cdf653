"""An HTTP/1.1 keep-alive upstream that answers every request after a delay, for the
aggregate row of docs/benchmarks.md: python3 bench/slow_upstream.py PORT DELAY_MS."""
import asyncio
import sys

PORT, DELAY = int(sys.argv[1]), int(sys.argv[2]) / 1000


async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            await asyncio.sleep(DELAY)
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
