#!/usr/bin/env python3
"""Pieces of benches/queue.sh (loopback only, bounded in time).

  burst.py backend PORT      a backend like a small app server: 4 workers, 50 ms per request,
                             a backlog of 8 waiting; beyond that it is overloaded and answers
                             503 at once (as Tomcat refuses past maxThreads + acceptCount).
                             HTTP/1.1 keep-alive, GET only.
  burst.py client PORT N R   N connections opened at once, each sending R requests in turn;
                             prints one JSON line: requests, errors (non-200, resets,
                             timeouts), p50/p99/max latency in ms, wall time.
"""
import asyncio
import json
import sys
import time

WORKERS, DELAY, BACKLOG = 4, 0.050, 8


async def backend(port):
    sem = asyncio.Semaphore(WORKERS)
    state = {"waiting": 0}

    async def serve(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                if sem.locked() and state["waiting"] >= BACKLOG:
                    body, status = b"overloaded\n", b"503 Service Unavailable"
                else:
                    state["waiting"] += 1
                    async with sem:
                        state["waiting"] -= 1
                        await asyncio.sleep(DELAY)
                    body, status = b"ok\n", b"200 OK"
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


async def client(port, conns, per_conn):
    latencies, errors = [], [0]

    async def one():
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), 10)
        except (OSError, asyncio.TimeoutError):
            errors[0] += per_conn
            return
        done = 0
        try:
            for i in range(per_conn):
                start = time.monotonic()
                writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await asyncio.wait_for(reader.readexactly(length), 30)
                latencies.append((time.monotonic() - start) * 1000)
                done += 1
                if not head.startswith(b"HTTP/1.1 200"):
                    errors[0] += 1
                if b"connection: close" in head.lower():
                    errors[0] += per_conn - i - 1
                    return
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            errors[0] += per_conn - done
        finally:
            writer.close()

    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(conns)))
    wall = time.monotonic() - t0
    latencies.sort()

    def pct(p):
        return round(latencies[min(len(latencies) - 1, int(len(latencies) * p))], 1) if latencies else None

    print(json.dumps({"requests": conns * per_conn, "errors": errors[0],
                      "p50_ms": pct(0.50), "p99_ms": pct(0.99),
                      "max_ms": round(latencies[-1], 1) if latencies else None,
                      "wall_s": round(wall, 2)}))


if __name__ == "__main__":
    if sys.argv[1] == "backend":
        asyncio.run(backend(int(sys.argv[2])))
    else:
        asyncio.run(client(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
