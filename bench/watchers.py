"""A watcher process for `make bench`: opens N watch streams and prints the delivery latency
of each event (now − the creation time the sender wrote into the pod) as JSON lines.
Watchers live in their own processes so that the sender's timing is not disturbed by the
receivers' decoding work."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from kubelab.client.client import Client


async def main(args) -> None:
    clients = [Client.connect(args.config) for _ in range(max(1, args.count // 100))]
    lat: list[float] = []
    opened = resumed = 0

    async def watch(i: int) -> None:
        nonlocal opened, resumed
        rc = clients[i % len(clients)].pods("bench")
        rv = args.rv
        opened += 1
        while True:
            # The server ends a stream that falls too far behind: carry on from the last event
            # seen, as an informer does, so that no event is lost or counted twice.
            async for ev in rc.watch(resource_version=rv, label_selector="app=watched", allow_bookmarks=False):
                rv = ev.object.metadata.resourceVersion
                lat.append(time.time() - float(ev.object.metadata.annotations["sent"]))
            resumed += 1
            await asyncio.sleep(0.1)

    tasks = [asyncio.create_task(watch(i)) for i in range(args.count)]
    await asyncio.sleep(1)
    print(json.dumps({"ready": opened}), flush=True)
    expected = args.count * args.events
    end = time.monotonic() + args.timeout
    while len(lat) < expected and time.monotonic() < end:
        await asyncio.sleep(0.2)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in clients:
        await c.close()
    print(json.dumps({"latencies": lat, "resumed": resumed}), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--events", type=int, default=100)
    ap.add_argument("--rv", required=True)
    ap.add_argument("--timeout", type=float, default=90)
    asyncio.run(main(ap.parse_args()))
    sys.exit(0)
