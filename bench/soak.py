#!/usr/bin/env python3
"""Soak: --minutes of mixed load against one modgate, reporting file descriptors and RSS of the
gateway after warm-up and at the end. Loopback only; every loop is bounded by the deadline.

Load, all at once:
  - intercepted small GETs answered from the cache (loadgen, 8 keep-alive connections, h2);
  - intercepted 20 MB zip downloads from the cache (loadgen, 1 connection);
  - blind CONNECT tunnels to a local echo server (open, echo 16 KB, close);
  - cache misses (unique module paths the upstream answers 404);
  - clients that give up in the middle of a zip download.

Usage: python3 bench/soak.py [--minutes 10] [--fd-slack 32] [--rss-slack-mib 48]
Exits 1 if descriptors or RSS grew beyond the slack.
"""

import argparse
import os
import socket
import subprocess
import threading
import time

from common import LOADGEN, Procs, build, cleanup, gateway_for, rss_mib, start_file_server, tmpdir


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def echo_server():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(128)

    def serve(c):
        with c:
            while True:
                d = c.recv(65536)
                if not d:
                    return
                c.sendall(d)

    def loop():
        while True:
            c, _ = srv.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return srv.getsockname()


def tunnel_loop(proxy, echo, deadline, stats):
    host, port = proxy.split(":")
    while time.time() < deadline:
        try:
            s = socket.create_connection((host, int(port)), timeout=5)
            s.sendall(f"CONNECT {echo[0]}:{echo[1]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(1)
            payload = os.urandom(16384)
            s.sendall(payload)
            got = b""
            while len(got) < len(payload):
                got += s.recv(65536)
            s.close()
            stats["tunnels"] += 1
        except OSError:
            stats["errors"] += 1


def curl_loop(proxy, ca, deadline, stats, kind):
    i = 0
    while time.time() < deadline:
        i += 1
        if kind == "miss":
            url = f"https://proxy.golang.org/example.com/miss{i}/@v/list"
            args = []
        else:
            url = "https://proxy.golang.org/example.com/big/@v/v1.0.0.zip"
            args = ["--max-time", "0.05"]  # give up in the middle
        subprocess.run(["curl", "-s", "-o", "/dev/null", "--proxy", f"http://{proxy}", "--cacert", ca] + args + [url])
        stats[kind] += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--fd-slack", type=int, default=32)
    ap.add_argument("--rss-slack-mib", type=float, default=48)
    a = ap.parse_args()
    build()
    work = tmpdir("modgate-soak-")
    procs = Procs()
    try:
        tree = f"{work}/tree"
        os.makedirs(f"{tree}/example.com/m/@v")
        with open(f"{tree}/example.com/m/@v/v1.0.0.mod", "w") as f:
            f.write("module example.com/m\n" + "// padding\n" * 90)
        os.makedirs(f"{tree}/example.com/big/@v")
        subprocess.run([LOADGEN, "mkzip", "--module", "example.com/big", "--version", "v1.0.0", "--size", str(20 << 20),
                        "--out", f"{tree}/example.com/big/@v/v1.0.0.zip"], check=True)
        up_addr, certs = start_file_server(procs, work, tree)
        mg, proxy, admin, ca = gateway_for(procs, work, up_addr, certs)
        echo = echo_server()
        seconds = int(a.minutes * 60)
        deadline = time.time() + seconds
        stats = {"tunnels": 0, "miss": 0, "abort": 0, "errors": 0}
        small = procs.start([LOADGEN, "run", "--url", "https://proxy.golang.org/example.com/m/@v/v1.0.0.mod", "--proxy", proxy,
                             "--ca", ca, "--h2", "--concurrency", "8", "--duration", f"{seconds}s"])
        large = procs.start([LOADGEN, "run", "--url", "https://proxy.golang.org/example.com/big/@v/v1.0.0.zip", "--proxy", proxy,
                             "--ca", ca, "--concurrency", "1", "--duration", f"{seconds}s"])
        threads = [threading.Thread(target=tunnel_loop, args=(proxy, echo, deadline, stats)),
                   threading.Thread(target=curl_loop, args=(proxy, ca, deadline, stats, "miss")),
                   threading.Thread(target=curl_loop, args=(proxy, ca, deadline, stats, "abort"))]
        for t in threads:
            t.start()
        time.sleep(min(30, seconds / 4))
        start_fds, start_rss = fds(mg.pid), rss_mib(mg.pid)
        for t in threads:
            t.join()
        small_out, large_out = small.communicate()[0].strip(), large.communicate()[0].strip()
        time.sleep(2)  # let connections wind down
        end_fds, end_rss = fds(mg.pid), rss_mib(mg.pid)
        print(f"soak: {a.minutes} min; tunnels {stats['tunnels']}, misses {stats['miss']}, aborted downloads {stats['abort']}, "
              f"client errors {stats['errors']}")
        print(f"small hits: {small_out}")
        print(f"zip hits:   {large_out}")
        print(f"file descriptors: {start_fds} after warm-up -> {end_fds} at the end")
        print(f"RSS: {start_rss:.1f} MiB after warm-up -> {end_rss:.1f} MiB at the end")
        ok = end_fds - start_fds <= a.fd_slack and end_rss - start_rss <= a.rss_slack_mib
        print("result:", "ok" if ok else "GROWTH BEYOND BOUND")
        return 0 if ok else 1
    finally:
        procs.stop()
        cleanup(work)


if __name__ == "__main__":
    raise SystemExit(main())
