#!/usr/bin/env python3
"""Start-up at any cache size (issue: production scale, item 1).

Generates caches of N entries (module .info/.mod/.zip files and lists, in modgate's on-disk
layout, as an earlier run would have left them), then for each N, with a cold page cache
(`echo 3 > /proc/sys/vm/drop_caches`, so run as root):

  - time from starting `modgate serve` to the first cache hit served through the proxy
    (a CONNECT to proxy.golang.org, intercepted, answered from the cache);
  - the latency of hits on random cached entries while the index is still being built, and
    after (keep-alive, one at a time: p50 and p99);
  - time until /readyz says the index is complete, the RSS then, and the index's own memory
    (modgate_cache_index_bytes) per entry;
  - `modgate cache stats` with the gateway running (answered from its index) and without
    (a walk of the directory, warm page cache).

Nothing leaves loopback: the upstreams are overridden to a closed loopback port, so a miss
fails instead of going out.

    python3 bench/cache_scale.py --sizes 10000,100000,1000000 [--binary target/release/modgate]

The generated caches are kept under --work (about 4 KiB of disk per entry) and reused.
"""

import argparse
import http.client
import os
import random
import ssl
import statistics
import subprocess
import sys
import time
import urllib.request

import common
from peerprocs import free_port


def generate(root, n):
    """A cache of about `n` entries under root/cache; returns the URL paths of the .info entries
    and the number of entries."""
    cache = os.path.join(root, "cache")
    done = os.path.join(root, "complete")
    infos = []
    per_module = 31  # 10 versions x (.info, .mod, .zip) + the list
    modules = (n + per_module - 1) // per_module
    count = 0
    rnd = random.Random(n)
    zip_body = bytes(rnd.getrandbits(8) for _ in range(700))
    making = not os.path.exists(done)
    for m in range(modules):
        module = f"github.com/org{m % 997}/project{m}"
        d = os.path.join(cache, "mod", module, "@v")
        if making:
            os.makedirs(d, exist_ok=True)
        versions = []
        for v in range(10):
            if count + 3 > n:
                break
            version = f"v1.{v}.{m % 7}"
            versions.append(version)
            files = {
                f"{version}.info": f'{{"Version":"{version}","Time":"2024-01-02T03:04:05Z"}}'.encode(),
                f"{version}.mod": f"module {module}\n\ngo 1.21\n".encode(),
                f"{version}.zip": zip_body,
            }
            for name, body in files.items():
                if making:
                    with open(os.path.join(d, name), "wb") as f:
                        f.write(body)
                count += 1
            infos.append(f"/{module}/@v/{version}.info")
        if count < n and versions:
            if making:
                with open(os.path.join(d, "list"), "wb") as f:
                    f.write("".join(v + "\n" for v in versions).encode())
            count += 1
        if count >= n:
            break
    if making:
        open(done, "w").close()
    return infos, count


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


class Agent:
    """One keep-alive HTTPS connection to proxy.golang.org through the gateway's CONNECT."""

    def __init__(self, proxy_port, ca):
        self.ctx = ssl.create_default_context(cafile=ca)
        self.proxy_port = proxy_port
        self.conn = None

    def get(self, path):
        if self.conn is None:
            self.conn = http.client.HTTPSConnection("127.0.0.1", self.proxy_port, context=self.ctx, timeout=30)
            self.conn.set_tunnel("proxy.golang.org", 443)
        self.conn.request("GET", path)
        r = self.conn.getresponse()
        body = r.read()
        return r.status, body


def admin_text(admin, path):
    with urllib.request.urlopen(f"http://{admin}{path}", timeout=30) as r:
        return r.read().decode()


def metric(admin, name):
    for line in admin_text(admin, "/metrics").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def timed_hits(agent, paths, count):
    lat = []
    for p in random.sample(paths, min(count, len(paths))):
        t = time.perf_counter()
        status, body = agent.get(p)
        lat.append((time.perf_counter() - t) * 1000)
        assert status == 200 and body.startswith(b'{"Version"'), (p, status, body[:200])
    lat.sort()
    return statistics.median(lat), lat[min(len(lat) - 1, int(len(lat) * 0.99))]


def run_one(binary, work, n, cold):
    root = os.path.join(work, f"n{n}")
    t = time.time()
    infos, count = generate(root, n)
    gen = time.time() - t
    if gen > 5:
        print(f"  generated {n} entries in {gen:.0f} s", file=sys.stderr)
    port, admin_port = free_port(), free_port()
    admin = f"127.0.0.1:{admin_port}"
    cfg = os.path.join(work, f"n{n}.toml")
    with open(cfg, "w") as f:
        f.write(f"""
[proxy]
listen = "127.0.0.1:{port}"
[admin]
listen = "{admin}"
[storage]
data_dir = "{root}"
[ca]
dir = "{work}/ca"
[log]
level = "warn"
access_log = false
[upstream.overrides]
"proxy.golang.org" = "https://127.0.0.1:9"
"sum.golang.org" = "https://127.0.0.1:9"
""")
    if not os.path.exists(f"{work}/ca/ca.pem"):
        subprocess.run([binary, "ca", "init", "--config", cfg], check=True, capture_output=True)
    ca = f"{work}/ca/ca.pem"
    if cold:
        drop_caches()
    procs = common.Procs()
    try:
        start = time.perf_counter()
        p = procs.start([binary, "serve", "--config", cfg])
        first = random.choice(infos)
        while True:
            try:
                agent = Agent(port, ca)
                status, _ = agent.get(first)
                if status == 200:
                    break
            except (OSError, http.client.HTTPException):
                pass
            if p.poll() is not None:
                raise RuntimeError("modgate exited")
            time.sleep(0.005)
        first_hit = time.perf_counter() - start
        during = timed_hits(agent, infos, 200)
        building = "complete" not in admin_text(admin, "/readyz")
        while "complete" not in admin_text(admin, "/readyz"):
            time.sleep(0.05)
        indexed = time.perf_counter() - start
        rss = common.rss_mib(p.pid)
        index_bytes = metric(admin, "modgate_cache_index_bytes")
        entries = metric(admin, "modgate_cache_entries")
        agent = Agent(port, ca)  # the first one may have been closed as idle meanwhile
        agent.get(first)
        after = timed_hits(agent, infos, 500)
        t = time.perf_counter()
        out = subprocess.run([binary, "cache", "stats", "--config", cfg], check=True, capture_output=True, text=True).stdout
        stats_running = time.perf_counter() - t
        assert f"entries:     {count} " in out, out
    finally:
        procs.stop()
    t = time.perf_counter()
    out = subprocess.run([binary, "cache", "stats", "--config", cfg], check=True, capture_output=True, text=True).stdout
    stats_walk = time.perf_counter() - t
    assert f"entries:     {count} " in out, out
    return {
        "n": n,
        "first_hit_s": first_hit,
        "hit_during_ms": during if building else None,
        "indexed_s": indexed,
        "rss_mib": rss,
        "index_b_per_entry": index_bytes / entries if entries else 0,
        "hit_after_ms": after,
        "stats_running_s": stats_running,
        "stats_walk_s": stats_walk,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--binary", default=common.MODGATE)
    ap.add_argument("--work", default="/var/tmp/modgate-scale")
    ap.add_argument("--warm", action="store_true", help="do not drop the page cache before each start")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    rows = [run_one(a.binary, a.work, int(n), not a.warm) for n in a.sizes.split(",")]
    cond = "warm" if a.warm else "cold"
    print(f"| entries | first hit after start ({cond}) | hit p50 / p99 while indexing | index complete | RSS then | index bytes per entry | hit p50 / p99 after | `cache stats` (gateway running) | `cache stats` (walk, no gateway) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        during = "(index done first)" if r["hit_during_ms"] is None else f"{r['hit_during_ms'][0]:.2f} / {r['hit_during_ms'][1]:.2f} ms"
        print(
            f"| {r['n']:,} | {r['first_hit_s']:.3f} s | {during} | {r['indexed_s']:.1f} s | {r['rss_mib']:.0f} MiB "
            f"| {r['index_b_per_entry']:.0f} | {r['hit_after_ms'][0]:.2f} / {r['hit_after_ms'][1]:.2f} ms "
            f"| {r['stats_running_s']:.2f} s | {r['stats_walk_s']:.2f} s |"
        )


if __name__ == "__main__":
    main()
