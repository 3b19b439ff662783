"""Echo server on Python websockets (asyncio), a heartbeat peer for
scripts/bench-peers:  python echo.py PORT [--ping-seconds N] [--deflate]

Listens on 127.0.0.1 only and echoes text and binary messages. With
--ping-seconds N, websockets pings every connection every N s
(`ping_interval`) and closes one whose Pong takes longer than N s
(`ping_timeout`); without it, its defaults apply (20 s, 20 s). One thread,
one asyncio loop: the same shape as the other peers' single thread.
--deflate: websockets' default compression (permessage-deflate with its
defaults: context takeover both ways, 12-bit windows, memory level 5); without it, compression=None like the other peers.
"""

import asyncio
import logging
import sys

from websockets.asyncio.server import serve


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def main(port, ping, deflate):
    # The load client drops its connections without a closing handshake;
    # websockets would log a traceback for each one.
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
    kwargs = {"ping_interval": ping, "ping_timeout": ping} if ping else {}
    if not deflate:
        # No per-connection compression: like the other peers.
        kwargs["compression"] = None
    async with serve(echo, "127.0.0.1", port, backlog=4096, **kwargs) as server:
        await server.serve_forever()


if __name__ == "__main__":
    usage = "usage: echo.py PORT [--ping-seconds N] [--deflate]"
    args = sys.argv[1:]
    try:
        port = int(args[0])
        ping = None
        deflate = "--deflate" in args
        rest = [a for a in args[1:] if a != "--deflate"]
        if len(rest) == 2 and rest[0] == "--ping-seconds":
            ping = float(rest[1])
        elif rest:
            raise ValueError
    except (IndexError, ValueError):
        print(usage, file=sys.stderr)
        sys.exit(2)
    try:
        asyncio.run(main(port, ping, deflate))
    except KeyboardInterrupt:
        pass
