"""The peer proxies and file servers of bench/peers.py, from Debian packages, on loopback.

Each start_* function writes its own configuration under a work directory, starts the process in
the foreground (so it is a child of the benchmark and stops with it) and waits until it accepts
connections. Returns a Peer: a name, the process, the proxy or server address, and the CA the
load client must trust when the peer terminates TLS.

- mitmdump (mitmproxy 8): intercepts everything; CA generated in its confdir on first start.
- squid (squid-openssl 5) with ssl_bump (peek at step 1, then bump): CA made with openssl,
  leaf certificates from security_file_certgen (its db initialised with -c).
- squid without ssl_bump, tinyproxy: blind CONNECT tunnels.
- nginx: serves the same directory over TLS (HTTP/1.1 and h2), sendfile, one worker per core.
"""

import os
import shutil
import socket
import subprocess
import time

import common

PACKAGES = ["squid-openssl", "mitmproxy", "tinyproxy", "nginx", "openssl", "curl"]
BINARIES = ["/usr/sbin/squid", "/usr/lib/squid/security_file_certgen", "/usr/bin/mitmdump", "/usr/bin/tinyproxy", "/usr/sbin/nginx", "/usr/bin/openssl", "/usr/bin/curl"]


def ensure_packages():
    """Installs the peers from Debian if any is missing (as .ci/run does for the test tools)."""
    missing = [b for b in BINARIES if not os.path.exists(b)]
    if missing:
        print(f"installing peers ({', '.join(missing)} missing): apt-get install {' '.join(PACKAGES)}", flush=True)
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(sudo + ["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(sudo + ["apt-get", "install", "-y", "-q", "--no-install-recommends"] + PACKAGES, check=True, env=env, stdout=subprocess.DEVNULL)
    out = subprocess.run(["/usr/sbin/squid", "-v"], capture_output=True, text=True).stdout
    if "--with-openssl" not in out:
        raise SystemExit("squid is not built with OpenSSL: install squid-openssl (apt-get install squid-openssl)")


def versions():
    """One line per peer with its version, for the notes."""
    def first(args, pick=None):
        try:
            out = subprocess.run(args, capture_output=True, text=True, timeout=20)
            text = (out.stdout + out.stderr).strip().splitlines()
            return pick(text) if pick else text[0]
        except Exception as e:  # noqa: BLE001 - a missing version line is not fatal
            return f"? ({e})"
    return {
        "mitmdump": first(["mitmdump", "--version"], lambda t: t[0]),
        "squid": first(["squid", "-v"], lambda t: t[0]),
        "tinyproxy": first(["tinyproxy", "-v"]),
        "nginx": first(["nginx", "-v"]),
        "openssl": first(["openssl", "version"]),
    }


class Peer:
    def __init__(self, name, proc, addr, ca=None, pid=None):
        self.name = name
        self.proc = proc
        self.addr = addr
        self.ca = ca
        self.pid = pid or proc.pid


def _start(procs, args, log):
    """Starts `args` as one of `procs` (stopped with the benchmark), output to the file `log`."""
    out = open(log, "w")
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    procs.procs.append(p)
    return p


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc, timeout=30, what="peer", log=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = open(log).read()[-2000:] if log and os.path.exists(log) else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}\n{tail}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port}")


def _private_dir(work, name, owner=None):
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    if owner:
        # Squid and tinyproxy drop root for this user; it must reach and write its directory.
        os.chmod(work, 0o755)
        shutil.chown(d, owner, owner)
    return d


def start_mitmdump(procs, work, up_ca):
    d = _private_dir(work, "mitmproxy")
    port = free_port()
    log = os.path.join(d, "mitmdump.log")
    p = _start(procs, [
        "mitmdump", "--listen-host", "127.0.0.1", "--listen-port", str(port),
        "--set", f"confdir={d}",
        "--set", f"ssl_verify_upstream_trusted_ca={up_ca}",
        # Without this mitmproxy holds each whole body in memory before passing it on.
        "--set", "stream_large_bodies=1m",
        "--set", "flow_detail=0", "--set", "termlog_verbosity=error",
    ], log)
    wait_port(port, p, what="mitmdump", log=log)
    ca = os.path.join(d, "mitmproxy-ca-cert.pem")
    deadline = time.time() + 20
    while not os.path.exists(ca) and time.time() < deadline:
        time.sleep(0.1)
    return Peer("mitmdump", p, f"127.0.0.1:{port}", ca)


def make_openssl_ca(d, cn):
    key, pem = os.path.join(d, "ca.key"), os.path.join(d, "ca.pem")
    subprocess.run([
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "30",
        "-keyout", key, "-out", pem, "-subj", f"/CN={cn}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    ], check=True, capture_output=True)
    return pem, key


SQUID_COMMON = """
acl localnet src 127.0.0.1/32
http_access allow localnet
http_access deny all
cache deny all
cache_mem 8 MB
max_filedescriptors 16384
pid_filename {d}/squid.pid
cache_log {d}/cache.log
access_log none
cache_store_log none
logfile_rotate 0
coredump_dir {d}
cache_effective_user proxy
cache_effective_group proxy
shutdown_lifetime 1 seconds
via off
forwarded_for delete
"""


def start_squid(procs, work, up_ca, bump):
    name = "squid-bump" if bump else "squid"
    d = _private_dir(work, name, owner="proxy")
    port = free_port()
    ca = None
    if bump:
        ca, key = make_openssl_ca(d, "squid bench CA")
        db = os.path.join(d, "ssl_db")
        subprocess.run(["/usr/lib/squid/security_file_certgen", "-c", "-s", db, "-M", "16MB"], check=True, capture_output=True)
        subprocess.run(["chown", "-R", "proxy:proxy", d], check=True)
        conf = f"""
http_port 127.0.0.1:{port} ssl-bump tls-cert={ca} tls-key={key} generate-host-certificates=on dynamic_cert_mem_cache_size=16MB
sslcrtd_program /usr/lib/squid/security_file_certgen -s {db} -M 16MB
sslcrtd_children 8 startup=2 idle=1
acl step1 at_step SslBump1
ssl_bump peek step1
ssl_bump bump all
tls_outgoing_options cafile={up_ca}
"""
    else:
        conf = f"http_port 127.0.0.1:{port}\n"
    conf += SQUID_COMMON.format(d=d)
    path = os.path.join(d, "squid.conf")
    with open(path, "w") as f:
        f.write(conf)
    subprocess.run(["chown", "-R", "proxy:proxy", d], check=True)
    log = os.path.join(d, "cache.log")
    p = _start(procs, ["/usr/sbin/squid", "-N", "-f", path], os.path.join(d, "stderr.log"))
    wait_port(port, p, what=name, log=log)
    return Peer(name, p, f"127.0.0.1:{port}", ca)


def start_tinyproxy(procs, work):
    d = _private_dir(work, "tinyproxy", owner="proxy")
    port = free_port()
    path = os.path.join(d, "tinyproxy.conf")
    with open(path, "w") as f:
        f.write(f"""
User proxy
Group proxy
Port {port}
Listen 127.0.0.1
Timeout 600
MaxClients 4096
LogLevel Error
LogFile "{d}/tinyproxy.log"
PidFile "{d}/tinyproxy.pid"
Allow 127.0.0.1
DisableViaHeader Yes
""")
    p = _start(procs, ["/usr/bin/tinyproxy", "-d", "-c", path], os.path.join(d, "stderr.log"))
    wait_port(port, p, what="tinyproxy", log=os.path.join(d, "tinyproxy.log"))
    return Peer("tinyproxy", p, f"127.0.0.1:{port}")


def start_nginx(procs, work, tree, certs):
    d = _private_dir(work, "nginx")
    port = free_port()
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(f"""
user root;
daemon off;
master_process on;
worker_processes auto;
worker_rlimit_nofile 16384;
error_log {d}/error.log error;
pid {d}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  default_type application/octet-stream;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  ssl_session_cache off;
  server {{
    listen 127.0.0.1:{port} ssl http2;
    ssl_certificate {certs}/cert.pem;
    ssl_certificate_key {certs}/key.pem;
    root {tree};
  }}
}}
""")
    p = _start(procs, ["/usr/sbin/nginx", "-p", d, "-c", path], os.path.join(d, "stderr.log"))
    wait_port(port, p, what="nginx", log=os.path.join(d, "error.log"))
    return Peer("nginx", p, f"localhost:{port}")


# === memory of a process tree ===

def children_of(pid):
    """`pid` and all its descendants (squid's helpers, nginx's workers, ...)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
        except (OSError, ValueError, IndexError):
            pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_cpu_seconds(pid):
    """User + system CPU seconds used so far by a process and its descendants (nginx's and
    squid's workers), those that are still running."""
    return sum(tree_cpu_split(pid))


def tree_cpu_split(pid):
    """(user, system) CPU seconds of a process and its running descendants."""
    user = system = 0.0
    for p in children_of(pid):
        try:
            u, s = common.cpu_split(p)
        except (FileNotFoundError, ProcessLookupError):
            continue
        user += u
        system += s
    return user, system


def tree_rss_mib(pid):
    return sum(status_kib(p, "VmRSS") for p in children_of(pid)) / 1024.0


class RssSampler:
    """Samples the summed RSS of a process tree every 100 ms in a thread; `peak` in MiB."""

    def __init__(self, pid):
        import threading
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        pids, refreshed = [], 0.0
        while not self._stop.is_set():
            now = time.time()
            if now - refreshed > 1.0:
                pids, refreshed = children_of(self.pid), now
            self.peak = max(self.peak, sum(status_kib(p, "VmRSS") for p in pids) / 1024.0)
            self._stop.wait(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss_mib(self.pid))
