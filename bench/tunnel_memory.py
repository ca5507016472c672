#!/usr/bin/env python3
"""Memory per used tunnel (issue 19): N blind CONNECT tunnels through each proxy, each carrying
1 MB from a loopback server to the client, then left open and idle; the proxy's resident memory
is read before, with all N idle, and a few seconds after they all closed. Peers from the same
run: Squid (no ssl_bump) and tinyproxy, as Debian ships them (bench/peerprocs.py; Squid's config
allows 16,384 descriptors and tinyproxy's 4,096 clients, so keep N at 4,000 to compare all).

    cargo build --release -p modgate -p loadgen
    python3 bench/tunnel_memory.py --tunnels 4000 --peers          # modgate, squid, tinyproxy
    python3 bench/tunnel_memory.py --tunnels 10000                 # modgate alone, the target
    python3 bench/tunnel_memory.py --tunnels 4000 --binary /tmp/modgate-before   # A/B

Prints, per proxy: RSS before, RSS with every tunnel idle and per tunnel, RSS after close.
"""

import argparse
import asyncio
import os
import resource
import time

import common
import peerprocs
from common import Procs

PAYLOAD = 1 << 20


async def serve_payload(port_box):
    """On connect: send PAYLOAD bytes, then wait for the client to close."""
    chunk = os.urandom(64 << 10)

    async def handle(reader, writer):
        sent = 0
        while sent < PAYLOAD:
            writer.write(chunk)
            sent += len(chunk)
            await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    port_box.append(server.sockets[0].getsockname()[1])
    return server


async def open_tunnel(proxy, port, sem):
    host, pport = proxy.rsplit(":", 1)
    async with sem:
        reader, writer = await asyncio.open_connection(host, int(pport))
        writer.write(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 200" not in head.split(b"\r\n")[0]:
            raise RuntimeError(f"CONNECT refused: {head[:80]!r}")
        got = 0
        while got < PAYLOAD:
            data = await reader.read(256 << 10)
            if not data:
                raise RuntimeError("tunnel closed early")
            got += len(data)
        return writer


async def measure(name, pid, proxy, port, n):
    before = common.rss_mib(pid)
    sem = asyncio.Semaphore(256)
    t0 = time.time()
    writers = await asyncio.gather(*(open_tunnel(proxy, port, sem) for _ in range(n)))
    opened = time.time() - t0
    await asyncio.sleep(2)
    idle = common.rss_mib(pid)
    for w in writers:
        w.close()
    await asyncio.sleep(5)
    after = common.rss_mib(pid)
    per = (idle - before) * 1024 / n
    print(f"  {name:<10} RSS before {before:7.1f} MiB   {n} idle tunnels {idle:7.1f} MiB ({per:6.1f} KiB per tunnel)"
          f"   after close {after:7.1f} MiB   ({n} MB through in {opened:.1f} s)")
    return before, idle, after


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tunnels", type=int, default=4000)
    ap.add_argument("--peers", action="store_true", help="also Squid and tinyproxy")
    ap.add_argument("--binary", default=common.MODGATE, help="modgate binary")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1 << 20), hard))
    if a.peers:
        peerprocs.ensure_packages()
    work = common.tmpdir("modgate-tunmem-")
    procs = Procs()

    async def run():
        box = []
        server = await serve_payload(box)
        port = box[0]
        print(f"{a.tunnels} tunnels, each carrying 1 MB then idle")
        common.MODGATE = os.path.abspath(a.binary)
        # Set through the environment (the bench's config has its own [proxy] table).
        os.environ["MODGATE_PROXY__MAX_CONNECTIONS"] = str(a.tunnels * 2 + 100)
        p, proxy, _admin, _ca = common.start_modgate(procs, work, "modgate", """
[egress]
allow_addresses = ["127.0.0.0/8"]
connect_ports = ["1-65535"]
""")
        await measure("modgate", p.pid, proxy, port, a.tunnels)
        if a.peers:
            squid = peerprocs.start_squid(procs, work, None, bump=False)
            await measure("squid", squid.pid, squid.addr, port, a.tunnels)
            tiny = peerprocs.start_tinyproxy(procs, work)
            await measure("tinyproxy", tiny.pid, tiny.addr, port, a.tunnels)
        server.close()

    try:
        asyncio.run(run())
    finally:
        procs.stop()
        common.cleanup(work)


if __name__ == "__main__":
    main()
