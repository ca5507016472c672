#!/usr/bin/env python3
"""Memory per idle intercepted connection (issue 19, item 3): N connections CONNECT to
proxy.golang.org through modgate, complete TLS with modgate's leaf, fetch a 1 MB module zip
from the cache (HTTP/1.1 keep-alive) and stay open and idle; modgate's resident memory is read
before, with all N idle, and after they closed.

    cargo build --release -p modgate -p loadgen
    python3 bench/intercept_memory.py --connections 4000 [--binary /tmp/modgate-before] [--peers] [--h2]

With --peers, Squid with ssl_bump (Debian's squid-openssl) holds the same connections in the same
run, to https://localhost:<upstream>/... (Squid has no cache here and fetches each zip from the
loopback upstream; its helpers count in its RSS). tinyproxy cannot intercept TLS.

With TRIM_PROBE=1 it also calls malloc_trim in modgate (through gdb) while the connections are
idle, to tell live memory from freed memory glibc has not returned.
"""

import argparse
import os
import resource
import subprocess
import time

import common
import peerprocs
from common import LOADGEN, Procs


def measure(name, rss, pid, url, proxy, ca, a):
    """Opens the idle connections through `proxy` and prints RSS before, while idle, after."""
    subprocess.run(["curl", "-sS", "-o", "/dev/null", "--fail", "--proxy", f"http://{proxy}", "--cacert", ca, url], check=True)
    time.sleep(1)
    before = rss(pid)
    idle = subprocess.Popen([LOADGEN, "idle", "--url", url, "--proxy", proxy, "--ca", ca, "--count", str(a.connections), "--parallel", "64", "--hold", f"{a.hold + 4}s"] + (["--h2"] if a.h2 else []),
                            stdout=subprocess.PIPE, text=True)
    line = idle.stdout.readline()
    print(f"{name} loadgen: {line.strip()}")
    time.sleep(a.hold)
    held = rss(pid)
    if os.environ.get("TRIM_PROBE") and name == "modgate":
        subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "call (int)malloc_trim(0)"], capture_output=True)
        print(f"after a manual malloc_trim while idle: {rss(pid):.1f} MiB")
    idle.wait()
    time.sleep(5)
    after = rss(pid)
    per = (held - before) * 1024 / a.connections
    print(f"{name} RSS before {before:.1f} MiB, {a.connections} idle intercepted connections {held:.1f} MiB "
          f"({per:.1f} KiB each), after close {after:.1f} MiB", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=4000)
    ap.add_argument("--binary", default=common.MODGATE)
    ap.add_argument("--peers", action="store_true", help="also Squid with ssl_bump")
    ap.add_argument("--h2", action="store_true", help="the connections speak HTTP/2 (the go command's protocol with a module proxy) instead of HTTP/1.1")
    ap.add_argument("--wrap", default="", help="run modgate under this command, e.g. 'heaptrack -o /tmp/icmem' to see what the idle connections hold")
    ap.add_argument("--hold", type=int, default=5, help="seconds idle before the reading (less than proxy.header_read_timeout, 10 s, which closes idle HTTP/1.1 connections)")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if a.peers:
        peerprocs.ensure_packages()
    common.MODGATE = os.path.abspath(a.binary)
    work = common.tmpdir("modgate-icmem-")
    procs = Procs()
    try:
        tree = os.path.join(work, "tree")
        zdir = os.path.join(tree, "example.com/m/@v")
        os.makedirs(zdir)
        subprocess.run([LOADGEN, "mkzip", "--module", "example.com/m", "--version", "v1.0.0", "--size", str(1 << 20), "--out", os.path.join(zdir, "v1.0.0.zip")], check=True)
        up, certs = common.start_file_server(procs, work, tree)
        os.environ["MODGATE_PROXY__MAX_CONNECTIONS"] = str(a.connections + 100)
        p, proxy, admin, ca = common.gateway_for(procs, work, up, certs, wrap=a.wrap.split())
        measure("modgate", common.rss_mib, p.pid, "https://proxy.golang.org/example.com/m/@v/v1.0.0.zip", proxy, ca, a)
        if a.peers:
            procs.stop()
            procs = Procs()
            up, certs = common.start_file_server(procs, work, tree)
            squid = peerprocs.start_squid(procs, work, f"{certs}/ca.pem", bump=True)
            port = up.rsplit(":", 1)[1]
            measure("squid-bump", peerprocs.tree_rss_mib, squid.pid, f"https://localhost:{port}/example.com/m/@v/v1.0.0.zip", squid.addr, squid.ca, a)
    finally:
        procs.stop()
        common.cleanup(work)


if __name__ == "__main__":
    main()
