#!/usr/bin/env python3
"""The agent under made-up hosts and forged peer identities (issue 15).

Starts `tracemesh agent` (the binary given, default target/release/tracemesh)
with one app behind it that is down (so nothing but the agent does work),
sends N requests with N distinct Host values to the outbound listener and N
requests with N distinct forged `x-envoy-peer-metadata` identities to the
inbound listener, over keep-alive connections, pipelined, and reports:

  rss_idle    VmRSS after a warm-up of 5000 requests each way
  rss_after   VmRSS after the 2 x N requests
  scrape      bytes of one /metrics scrape
  rss_peak    VmHWM (the process's peak) once that scrape is done
  series      istio_requests_total series in the scrape

Run it on a build of the branch point and on the current one to compare:

  cargo build --release --bin tracemesh
  python3 bench/agent/cardinality.py --binary target/release/tracemesh -n 100000

Everything runs on 127.0.0.1 and ports the kernel picks.
"""

import argparse
import base64
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(tag, data):
    return bytes([tag]) + varint(len(data)) + data


def peer_metadata(i):
    """Istio's peer metadata (base64 protobuf Struct), forged identity i."""
    root = b""
    for key, value in [("NAME", f"forged-{i}"), ("WORKLOAD_NAME", f"forged-{i}"),
                       ("NAMESPACE", f"ns-{i}"), ("CLUSTER_ID", f"cluster-{i}")]:
        entry = field(0x0A, key.encode()) + field(0x12, field(0x1A, value.encode()))
        root += field(0x0A, entry)
    return base64.b64encode(root).decode()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss(pid, key="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(key)


def read_response(sock, buf):
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].lower()
            m = re.search(rb"content-length:\s*(\d+)", head)
            total = end + 4 + (int(m.group(1)) if m else 0)
            while len(buf) < total:
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError("closed")
                buf += chunk
            return buf[total:]
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("closed")
        buf += chunk


def drive(port, start, count, make, connections=4, batch=64):
    def worker(c):
        sock = socket.create_connection(("127.0.0.1", port))
        buf = b""
        per = count // connections
        i = 0
        while i < per:
            n = min(batch, per - i)
            sock.sendall(b"".join(make(start + c * per + i + k) for k in range(n)))
            for _ in range(n):
                buf = read_response(sock, buf)
            i += n
        sock.close()

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def outbound(i):
    return f"GET / HTTP/1.1\r\nhost: made-up-{i}.example\r\n\r\n".encode()


def inbound(i):
    return (f"GET / HTTP/1.1\r\nhost: frontend\r\nx-envoy-peer-metadata: {peer_metadata(i)}\r\n"
            f"x-envoy-peer-metadata-id: sidecar~{i}\r\n\r\n").encode()


def scrape(port):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n\r\n", 1)[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default="target/release/tracemesh")
    ap.add_argument("-n", type=int, default=100_000)
    args = ap.parse_args()
    ports = {k: free_port() for k in ("outbound", "inbound", "admin", "app")}
    config = f"""apiVersion: tracemesh.io/v1
kind: Agent
metadata: {{name: frontend-v1, namespace: default}}
spec:
  service: frontend
  labels: {{app: frontend, version: v1}}
  concurrency: 2
  inbound: {{listen: "127.0.0.1:{ports['inbound']}", app: "127.0.0.1:{ports['app']}"}}
  outbound: {{listen: "127.0.0.1:{ports['outbound']}"}}
  admin: {{listen: "127.0.0.1:{ports['admin']}"}}
  telemetry:
    otlp: {{endpoint: "http://127.0.0.1:1"}}
    sampling: 0.0
"""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "agent.yaml")
        with open(path, "w") as f:
            f.write(config)
        agent = subprocess.Popen([args.binary, "agent", "--config", path],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", ports["admin"])).close()
                    break
                except OSError:
                    time.sleep(0.05)
            drive(ports["outbound"], 0, 5000, outbound)
            drive(ports["inbound"], 0, 5000, inbound)
            idle = rss(agent.pid)
            started = time.time()
            drive(ports["outbound"], 10_000_000, args.n, outbound)
            drive(ports["inbound"], 10_000_000, args.n, inbound)
            elapsed = time.time() - started
            after = rss(agent.pid)
            text = scrape(ports["admin"])
            peak = rss(agent.pid, "VmHWM")
            series = sum(1 for line in text.split(b"\n") if line.startswith(b"istio_requests_total{"))
        finally:
            agent.terminate()
            agent.wait()
    print(f"| {args.binary} | {args.n} | {idle >> 20} MB | {after >> 20} MB | {len(text) >> 10} KiB "
          f"| {peak >> 20} MB | {series} | {elapsed:.0f} s |")


if __name__ == "__main__":
    sys.exit(main())
