"""Echo server on Python websockets (asyncio), a heartbeat peer for
scripts/bench-peers:  python echo.py PORT [--ping-seconds N]

Listens on 127.0.0.1 only and echoes text and binary messages. With
--ping-seconds N, websockets pings every connection every N s
(`ping_interval`) and closes one whose Pong takes longer than N s
(`ping_timeout`); without it, its defaults apply (20 s, 20 s). One thread,
one asyncio loop: the same shape as the other peers' single thread.
"""

import asyncio
import logging
import sys

from websockets.asyncio.server import serve


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def main(port, ping):
    # The load client drops its connections without a closing handshake;
    # websockets would log a traceback for each one.
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
    kwargs = {"ping_interval": ping, "ping_timeout": ping} if ping else {}
    # Large backlogs and no per-connection compression: like the other peers.
    async with serve(echo, "127.0.0.1", port, compression=None, backlog=4096, **kwargs) as server:
        await server.serve_forever()


if __name__ == "__main__":
    usage = "usage: echo.py PORT [--ping-seconds N]"
    args = sys.argv[1:]
    try:
        port = int(args[0])
        ping = None
        if len(args) == 3 and args[1] == "--ping-seconds":
            ping = float(args[2])
        elif len(args) != 1:
            raise ValueError
    except (IndexError, ValueError):
        print(usage, file=sys.stderr)
        sys.exit(2)
    try:
        asyncio.run(main(port, ping))
    except KeyboardInterrupt:
        pass
