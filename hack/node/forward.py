#!/usr/bin/env python3
"""Forwards TCP connections: LISTEN_HOST:PORT=TARGET_HOST:PORT ...

The node's pods cannot reach services bound to the host's 127.0.0.1 (the API
server, the STS stand-in). hack/node.sh gives the host an address the pod
network routes to and runs this in front of each such service.
"""
import asyncio
import sys


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


def handler(host, port):
    async def handle(client_reader, client_writer):
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, writer), pipe(reader, client_writer))

    return handle


async def main(pairs):
    servers = []
    for pair in pairs:
        listen, target = pair.split("=", 1)
        lhost, lport = listen.rsplit(":", 1)
        thost, tport = target.rsplit(":", 1)
        servers.append(await asyncio.start_server(handler(thost, int(tport)), lhost, int(lport)))
        print(f"forwarding {listen} to {target}", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1:]))
