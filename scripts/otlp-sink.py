#!/usr/bin/env python3
"""An OTLP/HTTP trace sink for benchmarks: accepts every POST /v1/traces (protobuf or JSON), answers
an empty ExportTraceServiceResponse at once, and counts requests and bytes. It stands in for a
collector so that a benchmark measures what exporting costs the mart, not a collector's speed.

Usage: scripts/otlp-sink.py PORT  (prints "requests N bytes B" on SIGTERM or Ctrl-C)
"""
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

counts = {"requests": 0, "bytes": 0}
lock = threading.Lock()


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        with lock:
            counts["requests"] += 1
            counts["bytes"] += length
        json = "json" in (self.headers.get("Content-Type") or "")
        body = b"{}" if json else b""
        self.send_response(200)
        self.send_header("Content-Type", "application/json" if json else "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink)

    def stop(*_):
        print(f"requests {counts['requests']} bytes {counts['bytes']}", flush=True)
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
