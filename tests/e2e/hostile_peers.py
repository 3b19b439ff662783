"""Hostile peers in a process of their own, so that their work does not
slow the test's measuring client. Usage:

    hostile_peers.py slowloris HOST PORT N INTERVAL LIMIT
    hostile_peers.py silent    HOST PORT N LIMIT

`slowloris`: N connections each send a request line, then one byte of a
header that never ends every INTERVAL seconds, and read whatever the
server answers. `silent`: N connections send nothing and wait. Both print
`READY` once every connection is open, then one JSON line when every
connection has ended (or LIMIT seconds passed): how many ended with which
HTTP status (`"none"`: closed without a byte), errors by kind, and the
earliest and latest end, in seconds after that connection opened."""
import asyncio
import json
import resource
import sys
import time


def raise_fd_limit():
    """N sockets need N descriptors: the soft limit is often 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard == resource.RLIM_INFINITY else min(hard, 20000)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def open_all(host, port, n):
    """Opens n connections, 100 at a time (a burst of n SYNs would only
    measure the listen backlog)."""
    conns = []
    for start in range(0, n, 100):
        batch = [asyncio.open_connection(host, port) for _ in range(start, min(n, start + 100))]
        for r, w in await asyncio.gather(*batch):
            conns.append((r, w, time.monotonic()))
    return conns


async def until_end(r, w, opened, limit, trickle=None):
    """Reads until EOF; returns (status, seconds after opening, error)."""
    task = asyncio.create_task(trickle(w)) if trickle else None
    status, error = "none", None
    try:
        data = await asyncio.wait_for(r.read(), timeout=limit)
        if data.startswith(b"HTTP/1.1 "):
            status = data.split(b" ")[1].decode()
        elif data:
            status = "garbage"
    except asyncio.TimeoutError:
        error = "still open at the limit"
    except OSError as e:
        error = type(e).__name__
    ended = time.monotonic() - opened
    if task:
        task.cancel()
    w.close()
    return status, ended, error


def report(results):
    statuses, errors = {}, {}
    for status, _, error in results:
        statuses[status] = statuses.get(status, 0) + 1
        if error:
            errors[error] = errors.get(error, 0) + 1
    ends = [t for _, t, _ in results]
    print(json.dumps({"statuses": statuses, "errors": errors,
                      "first_end": min(ends), "last_end": max(ends)}), flush=True)


async def slowloris(host, port, n, interval, limit):
    conns = await open_all(host, port, n)
    for _, w, _ in conns:
        w.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Slow: ")

    async def trickle(w):
        try:
            while True:
                await asyncio.sleep(interval)
                w.write(b"x")
                await w.drain()
        except (OSError, asyncio.CancelledError):
            pass  # cut by the server, or ended by us

    print("READY", flush=True)
    report(await asyncio.gather(*(until_end(r, w, t, limit, trickle) for r, w, t in conns)))


async def silent(host, port, n, limit):
    conns = await open_all(host, port, n)
    print("READY", flush=True)
    report(await asyncio.gather(*(until_end(r, w, t, limit) for r, w, t in conns)))


def main():
    raise_fd_limit()
    mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if mode == "slowloris":
        asyncio.run(slowloris(host, port, n, float(sys.argv[5]), float(sys.argv[6])))
    elif mode == "silent":
        asyncio.run(silent(host, port, n, float(sys.argv[5])))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
