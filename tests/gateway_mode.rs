//! Gateway mode under real network isolation: three network namespaces joined by veth pairs.
//!
//! - `client`: no proxy setting; its default route is the gateway; it trusts modgate's CA only.
//! - `gw`: runs the real `modgate serve` with a transparent listener behind iptables REDIRECT
//!   rules for ports 443 and 80, and no IP forwarding (modgate is the only way out).
//! - `inet`: the fake public hosts under their public names (name resolution from
//!   /etc/netns/<ns>/hosts): proxy.golang.org, sum.golang.org, the internal git host and a host
//!   that is spliced untouched.
//!
//! Only 10.77.x addresses inside these namespaces are used. Needs root, `ip` and `iptables`.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::*;

const GW_IN: &str = "10.77.1.1";
const PROXY_IP: &str = "10.77.2.10";
const SUMDB_IP: &str = "10.77.2.11";
const GIT_IP: &str = "10.77.2.12";
const SPLICE_IP: &str = "10.77.2.13";
const BLOCKED_IP: &str = "10.77.2.14";

fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The three namespaces; removed (with their veths and hosts files) on drop.
struct Net {
    client: String,
    gw: String,
    inet: String,
}

impl Net {
    /// `tproxy`: TPROXY rules (mangle table, policy routing) instead of REDIRECT.
    fn new(tproxy: bool) -> Net {
        let ip = tool("ip");
        let ip = ip.to_str().unwrap();
        let iptables = tool("iptables");
        let tag = format!(
            "{}{}",
            std::process::id() % 100_000,
            if tproxy { "t" } else { "r" }
        );
        let net = Net {
            client: format!("mgc{tag}"),
            gw: format!("mgg{tag}"),
            inet: format!("mgi{tag}"),
        };
        for ns in [&net.client, &net.gw, &net.inet] {
            let _ = Command::new(ip).args(["netns", "del", ns]).output();
            run(&[ip, "netns", "add", ns]);
            run(&[ip, "-n", ns, "link", "set", "lo", "up"]);
        }
        let (c, gc, i, gi) = (
            format!("c{tag}"),
            format!("gc{tag}"),
            format!("i{tag}"),
            format!("gi{tag}"),
        );
        run(&[ip, "link", "add", &c, "type", "veth", "peer", "name", &gc]);
        run(&[ip, "link", "set", &c, "netns", &net.client]);
        run(&[ip, "link", "set", &gc, "netns", &net.gw]);
        run(&[ip, "link", "add", &i, "type", "veth", "peer", "name", &gi]);
        run(&[ip, "link", "set", &i, "netns", &net.inet]);
        run(&[ip, "link", "set", &gi, "netns", &net.gw]);

        run(&[
            ip,
            "-n",
            &net.client,
            "addr",
            "add",
            "10.77.1.2/24",
            "dev",
            &c,
        ]);
        run(&[ip, "-n", &net.client, "link", "set", &c, "up"]);
        run(&[
            ip,
            "-n",
            &net.client,
            "route",
            "add",
            "default",
            "via",
            GW_IN,
        ]);

        run(&[ip, "-n", &net.gw, "addr", "add", "10.77.1.1/24", "dev", &gc]);
        run(&[ip, "-n", &net.gw, "addr", "add", "10.77.2.1/24", "dev", &gi]);
        run(&[ip, "-n", &net.gw, "link", "set", &gc, "up"]);
        run(&[ip, "-n", &net.gw, "link", "set", &gi, "up"]);

        for addr in [PROXY_IP, SUMDB_IP, GIT_IP, SPLICE_IP, BLOCKED_IP] {
            run(&[
                ip,
                "-n",
                &net.inet,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &i,
            ]);
        }
        run(&[ip, "-n", &net.inet, "link", "set", &i, "up"]);
        run(&[
            ip,
            "-n",
            &net.inet,
            "route",
            "add",
            "default",
            "via",
            "10.77.2.1",
        ]);

        // The gateway: everything for ports 443 and 80 from the client side goes to modgate.
        let iptables = iptables.to_str().unwrap();
        let gw_exec = [ip, "netns", "exec", net.gw.as_str()];
        if tproxy {
            let rule = [
                "-t",
                "mangle",
                "-A",
                "PREROUTING",
                "-i",
                &gc,
                "-p",
                "tcp",
                "-m",
                "multiport",
                "--dports",
                "80,443",
                "-j",
                "TPROXY",
                "--on-port",
                "3129",
                "--tproxy-mark",
                "0x1/0x1",
            ];
            run(&[&gw_exec[..], &[iptables], &rule[..]].concat());
            run(&[
                ip, "-n", &net.gw, "rule", "add", "fwmark", "0x1", "lookup", "100",
            ]);
            run(&[
                ip,
                "-n",
                &net.gw,
                "route",
                "add",
                "local",
                "0.0.0.0/0",
                "dev",
                "lo",
                "table",
                "100",
            ]);
        } else {
            for port in ["443", "80"] {
                let rule = [
                    "-t",
                    "nat",
                    "-A",
                    "PREROUTING",
                    "-i",
                    &gc,
                    "-p",
                    "tcp",
                    "--dport",
                    port,
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    "3129",
                ];
                run(&[&gw_exec[..], &[iptables], &rule[..]].concat());
            }
        }
        // Public names, as the client and the gateway resolve them. The internal git host is
        // known to the gateway only.
        let public = format!(
            "127.0.0.1 localhost\n{PROXY_IP} proxy.golang.org\n{SUMDB_IP} sum.golang.org\n{SPLICE_IP} splice.example\n{BLOCKED_IP} blocked.example\n"
        );
        net.hosts(&net.client, &public);
        net.hosts(&net.gw, &format!("{public}{GIT_IP} git.internal\n"));
        net
    }

    fn hosts(&self, ns: &str, text: &str) {
        let dir = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts"), text).unwrap();
    }

    /// Runs `f` on a thread inside namespace `ns`: sockets it creates belong to `ns` for life.
    fn within<T: Send>(&self, ns: &str, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                let fd = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
                nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }

    /// A listener bound inside the internet namespace.
    fn listen(&self, addr: &str) -> std::net::TcpListener {
        self.within(&self.inet, || std::net::TcpListener::bind(addr).unwrap())
    }

    /// A TCP connection made from the client namespace.
    fn connect(&self, addr: &str) -> tokio::net::TcpStream {
        let addr: SocketAddr = addr.parse().unwrap();
        let s = self.within(&self.client, || {
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(10)).unwrap()
        });
        s.set_nodelay(true).unwrap();
        s.set_nonblocking(true).unwrap();
        tokio::net::TcpStream::from_std(s).unwrap()
    }

    /// modgate's metrics, read from inside the gateway namespace.
    fn metrics(&self) -> String {
        self.within(&self.gw, || {
            let mut s = std::net::TcpStream::connect("127.0.0.1:9090").unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            text
        })
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.client, &self.gw, &self.inet] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(ns));
        }
    }
}

/// `modgate serve` running inside the gateway namespace.
struct GatewayProcess {
    child: std::process::Child,
    ca_pem: PathBuf,
    log: PathBuf,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sumdb_key`: the fixture database's key (as sum.golang.org), which modgate proves every
/// public `.mod` and `.zip` with; `None`: no verification (no database in the test).
fn start_gateway(
    net: &Net,
    dir: &Path,
    upstream_ca: &Path,
    tproxy: bool,
    sumdb_key: Option<&str>,
) -> GatewayProcess {
    let sumdb = match sumdb_key {
        Some(k) => format!("keys = [\"{k}\"]"),
        None => "verify = \"off\"".to_string(),
    };
    let password = dir.join("git-password");
    std::fs::write(&password, format!("{}\n", crate::private::PASSWORD)).unwrap();
    let config = format!(
        r#"
[proxy]
listen = "127.0.0.1:3128"
[admin]
listen = "127.0.0.1:9090"
[storage]
data_dir = "{dir}/data"
[ca]
dir = "{dir}/certs"
[egress]
allow = ["*"]
deny = ["blocked.example"]
[upstream]
extra_ca_file = "{ca}"
[sumdb]
{sumdb}
[transparent]
listen = "0.0.0.0:3129"
tproxy = {tproxy}
no_sni = "deny"
[[private.routes]]
module = "git.corp.example/{{group}}/{{repo}}"
git = "https://git.internal/{{group}}/{{repo}}"
username = "{user}"
password_file = "{password}"
extra_ca_file = "{ca}"
"#,
        dir = dir.display(),
        ca = upstream_ca.display(),
        user = crate::private::USER,
        password = password.display(),
    );
    let path = dir.join("modgate.toml");
    std::fs::write(&path, config).unwrap();
    let log = dir.join("modgate.log");
    let mut child = Command::new(tool("ip"))
        .args(["netns", "exec", &net.gw])
        .arg(env!("CARGO_BIN_EXE_modgate"))
        .args(["serve", "--config"])
        .arg(&path)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut banner = String::new();
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if line.starts_with("export GIT_SSL_CAINFO=") {
            break;
        }
    }
    assert!(
        banner.contains("gateway mode on 0.0.0.0:3129"),
        "banner: {banner}\nlog: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    GatewayProcess {
        child,
        ca_pem: dir.join("certs/ca.pem"),
        log,
    }
}

fn client_config(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Connects from the client namespace to `ip:443` and handshakes with `sni` (None: no SNI).
async fn handshake(
    net: &Net,
    ip: &str,
    sni: Option<&str>,
    cfg: rustls::ClientConfig,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut cfg = cfg;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = match sni {
        Some(n) => rustls::pki_types::ServerName::try_from(n.to_string()).unwrap(),
        None => {
            cfg.enable_sni = false;
            rustls::pki_types::ServerName::IpAddress(ip.parse::<std::net::IpAddr>().unwrap().into())
        }
    };
    let tcp = net.connect(&format!("{ip}:443"));
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
}

fn write_app(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("go.mod"),
        "module example.com/app\n\ngo 1.19\n\nrequire (\n\texample.com/hello v1.0.0\n\tgit.corp.example/team/alpha v1.0.0\n)\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("main.go"),
        "package main\n\nimport (\n\t\"fmt\"\n\n\t\"example.com/hello\"\n\t\"git.corp.example/team/alpha\"\n)\n\nfunc main() { fmt.Println(hello.Greeting(), alpha.V) }\n",
    )
    .unwrap();
}

/// The public hosts both tests use: proxy.golang.org serving `tree`, and splice.example (TLS
/// and plain HTTP), which modgate only passes through.
struct PublicHosts {
    _proxy: Upstream,
    _splice: Upstream,
    _plain: Upstream,
    splice_leaf: rustls::pki_types::CertificateDer<'static>,
    /// The upstream CA only (not modgate's).
    roots: rustls::RootCertStore,
}

impl PublicHosts {
    async fn start(net: &Net, ca: &TestCa, tree: &Path) -> PublicHosts {
        let (certs, key) = ca.leaf(&["proxy.golang.org"]);
        let proxy = Upstream::tls_on(
            net.listen(&format!("{PROXY_IP}:443")),
            certs,
            key,
            files_dir(tree.to_path_buf()),
        )
        .await;
        let (splice_certs, key) = ca.leaf(&["splice.example"]);
        let splice_leaf = splice_certs[0].clone();
        let splice = Upstream::tls_on(
            net.listen(&format!("{SPLICE_IP}:443")),
            splice_certs,
            key,
            fixed("spliced, untouched"),
        )
        .await;
        let plain = Upstream::plain_on(
            net.listen(&format!("{SPLICE_IP}:80")),
            fixed("plain HTTP by Host header"),
        )
        .await;
        PublicHosts {
            _proxy: proxy,
            _splice: splice,
            _plain: plain,
            splice_leaf,
            roots: roots_from_pem(&ca.pem),
        }
    }
}

/// An intercepted host answers with modgate's certificate and module routing.
async fn assert_intercepted(net: &Net, gw: &GatewayProcess, cfg: rustls::ClientConfig) {
    let tls = handshake(net, PROXY_IP, Some("proxy.golang.org"), cfg)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "intercepted with modgate's CA: {e}\n{}",
                std::fs::read_to_string(&gw.log).unwrap_or_default()
            )
        });
    let (status, _, body) = http_get(
        tls,
        "proxy.golang.org",
        "/example.com/hello/@v/list",
        Alpn::H1,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"v1.0.0\n");
}

/// A host outside the intercept set is spliced: its own certificate reaches the client.
async fn assert_spliced(net: &Net, hosts: &PublicHosts) {
    let tls = handshake(
        net,
        SPLICE_IP,
        Some("splice.example"),
        client_config(hosts.roots.clone()),
    )
    .await
    .expect("the spliced host's own certificate verifies against its own CA");
    let seen = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(
        seen, hosts.splice_leaf,
        "the client sees the host's own leaf"
    );
    let (status, _, body) = http_get(tls, "splice.example", "/", Alpn::H1).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"spliced, untouched");
}

/// Plain HTTP on a redirected port 80 is routed by its Host header.
async fn assert_plain_by_host(net: &Net) {
    let mut s = net.connect(&format!("{SPLICE_IP}:80"));
    s.write_all(b"GET /x HTTP/1.1\r\nHost: splice.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (code, _, body) = read_response(&mut s).await;
    assert_eq!(code, 200);
    assert_eq!(body, "plain HTTP by Host header");
}

/// A connection straight to the transparent port (not redirected) is closed unanswered.
async fn assert_loop_refused(net: &Net) {
    let mut s = net.connect(&format!("{GW_IN}:3129"));
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut reply = vec![];
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        s.read_to_end(&mut reply),
    )
    .await;
    assert!(reply.is_empty(), "a loop is closed without an answer");
}

#[tokio::test(flavor = "multi_thread")]
async fn go_builds_with_no_proxy_setting_through_the_network_gateway() {
    let net = Net::new(false);
    let ca = TestCa::new();
    let work = tempfile::tempdir().unwrap();

    // The internet: a GOPROXY, the checksum database, the internal git host, and a host that
    // modgate only splices (with plain HTTP on port 80 too).
    let tree = work.path().join("goproxy");
    crate::e2e::module_tree(&tree);
    let hosts = PublicHosts::start(&net, &ca, &tree).await;
    let ip = tool("ip");
    let sumdb = SumDb::start_at(
        &ca,
        &tree,
        &["sum.golang.org"],
        &[ip.to_str().unwrap(), "netns", "exec", &net.inet],
        &format!("{SUMDB_IP}:443"),
    );
    let repos = crate::private::build_repos(work.path());
    let git_log = Arc::new(std::sync::Mutex::new(vec![]));
    let (certs, key) = ca.leaf(&["git.internal"]);
    let _git = Upstream::tls_on(
        net.listen(&format!("{GIT_IP}:443")),
        certs,
        key,
        crate::private::internal_git_host(repos, git_log.clone()),
    )
    .await;

    let gw = start_gateway(&net, work.path(), &ca.path, false, Some(&sumdb.vkey));

    // 1. The go command in the client namespace: no HTTPS_PROXY, no GOPROXY, no GOPRIVATE;
    // only modgate's CA trusted. GOSUMDB names the fixture database's key (as sum.golang.org);
    // GONOSUMDB keeps the private module out of it.
    // Both go commands (the second gets the modules from modgate's cache).
    for v in GO_VERSIONS {
        let home = work.path().join(format!("home-{v}"));
        let app = work.path().join(format!("app-{v}"));
        write_app(&app);
        let mut cmd = Command::new(&ip);
        go_env(&mut cmd, &app, &home);
        let out = cmd
            .args(["netns", "exec", &net.client])
            .arg(go_tool(v))
            .args(["build", "-o", "app", "."])
            .env("GOFLAGS", "-mod=mod -modcacherw")
            .env("GOSUMDB", &sumdb.vkey)
            .env("GONOSUMDB", "git.corp.example")
            .env("SSL_CERT_FILE", &gw.ca_pem)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "Go {v}: go build in the client namespace: {}\nmodgate log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&gw.log).unwrap_or_default()
        );
        let run = Command::new(app.join("app")).output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&run.stdout).trim(),
            "hello, verified world 1"
        );
    }
    assert!(
        sumdb
            .requests()
            .iter()
            .any(|p| p == "/lookup/example.com/greet@v1.1.0"),
        "the public module was verified by the checksum database"
    );
    assert!(
        git_log
            .lock()
            .unwrap()
            .iter()
            .any(|(path, authorized)| path.contains("team/alpha") && *authorized),
        "the private module came from the internal git host, with modgate's credentials"
    );
    let m = net.metrics();
    for route in ["public", "sumdb", "private"] {
        assert!(
            metric(
                &m,
                "modgate_request_duration_seconds_count",
                &[
                    ("route", route),
                    ("entry", "transparent"),
                    ("status", "2xx")
                ]
            ) >= 1.0,
            "{route} requests through the transparent listener are counted\n{m}"
        );
    }
    let log = std::fs::read_to_string(&gw.log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("modgate::access") && l.contains("transparent")),
        "access log lines name the entry mode:\n{log}"
    );

    // 1b. The module firewall holds in gateway mode too: a rule added by SIGHUP refuses a public
    // module to the go command that never set a proxy, with the text it prints.
    let config = work.path().join("modgate.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[[firewall.rules]]\nid = \"no-greet\"\nmodules = [\"example.com/greet\"]\n");
    std::fs::write(&config, text).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gw.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while metric(
        &net.metrics(),
        "modgate_config_reloads_total",
        &[("outcome", "ok")],
    ) < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the reload was not applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let home = work.path().join("home-firewall");
    let mut cmd = Command::new(&ip);
    go_env(&mut cmd, work.path(), &home);
    let out = cmd
        .args(["netns", "exec", &net.client])
        .arg(go_tool("1.23"))
        .args(["mod", "download", "example.com/greet@v1.0.0"])
        .env("GOSUMDB", &sumdb.vkey)
        .env("SSL_CERT_FILE", &gw.ca_pem)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused: {stderr}");
    assert!(
        stderr.contains(
            "modgate: example.com/greet@v1.0.0 refused by rule no-greet: module is denied"
        ),
        "{stderr}"
    );

    // 2. A host outside the intercept set is spliced untouched; an intercepted host gets
    // modgate's certificate. 3. Plain HTTP on a redirected port 80 goes by its Host header.
    assert_spliced(&net, &hosts).await;
    let gw_roots = roots_from_pem(&std::fs::read_to_string(&gw.ca_pem).unwrap());
    assert_intercepted(&net, &gw, client_config(gw_roots.clone())).await;
    assert_plain_by_host(&net).await;

    // 4. Refusals: a denied host, no SNI, an SNI that does not match the destination address.
    for (ip, sni) in [
        (BLOCKED_IP, Some("blocked.example")),
        (SPLICE_IP, None),
        (PROXY_IP, Some("splice.example")),
    ] {
        let err = handshake(&net, ip, sni, client_config(hosts.roots.clone()))
            .await
            .err()
            .unwrap_or_else(|| panic!("{ip} with SNI {sni:?} must be refused"));
        assert!(
            err.to_string().contains("AccessDenied"),
            "{ip} {sni:?}: refused with a TLS access_denied alert, got {err}"
        );
    }

    // 5. Hostile ClientHellos. Fragmented: 64-byte TLS records, each its own TCP segment — still
    // read whole and intercepted.
    let mut frag = client_config(gw_roots.clone());
    frag.max_fragment_size = Some(64);
    assert_intercepted(&net, &gw, frag).await;
    // Huge: a ClientHello announced at 70,000 bytes over several full records is refused.
    let mut s = net.connect(&format!("{PROXY_IP}:443"));
    let mut huge = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x01, 0x11, 0x70];
    huge.resize(5 + 0x4000, 0);
    let mut sent = 0;
    for _ in 0..5 {
        if s.write_all(&huge).await.is_err() {
            break;
        }
        sent += 1;
        huge = vec![0x16, 0x03, 0x01, 0x40, 0x00];
        huge.resize(5 + 0x4000, 0);
    }
    let mut reply = vec![];
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        s.read_to_end(&mut reply),
    )
    .await;
    assert!(
        sent >= 1 && reply.len() <= 7,
        "refused, at most with an alert: {reply:?}"
    );
    assert_loop_refused(&net).await;

    // Each outcome was counted, and the gateway still serves.
    let m = net.metrics();
    for (outcome, at_least) in [
        ("intercept", 3.0),
        ("splice", 1.0),
        ("http", 1.0),
        ("deny", 3.0),
        ("bad_client_hello", 1.0),
        ("loop", 1.0),
    ] {
        let n = metric(
            &m,
            "modgate_transparent_connections_total",
            &[("outcome", outcome)],
        );
        assert!(n >= at_least, "{outcome}: {n} < {at_least}\n{m}");
    }
    let tls = handshake(
        &net,
        PROXY_IP,
        Some("proxy.golang.org"),
        client_config(gw_roots),
    )
    .await
    .expect("still serving after hostile input");
    let (status, _, _) = http_get(
        tls,
        "proxy.golang.org",
        "/example.com/hello/@v/list",
        Alpn::H1,
    )
    .await;
    assert_eq!(status, 200);
}

/// The same gateway behind TPROXY rules (no NAT; modgate's listener has IP_TRANSPARENT): an
/// intercepted host gets modgate's certificate and module routing, a spliced host keeps its own,
/// plain HTTP goes by Host, and a connection straight to the listener is refused as a loop.
#[tokio::test(flavor = "multi_thread")]
async fn tproxy_rules_give_the_same_policy() {
    let net = Net::new(true);
    let ca = TestCa::new();
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("goproxy");
    crate::e2e::module_tree(&tree);
    let hosts = PublicHosts::start(&net, &ca, &tree).await;
    let gw = start_gateway(&net, work.path(), &ca.path, true, None);

    let gw_roots = roots_from_pem(&std::fs::read_to_string(&gw.ca_pem).unwrap());
    assert_intercepted(&net, &gw, client_config(gw_roots)).await;
    assert_spliced(&net, &hosts).await;
    assert_plain_by_host(&net).await;
    assert_loop_refused(&net).await;

    let m = net.metrics();
    for outcome in ["intercept", "splice", "http", "loop"] {
        assert!(
            metric(
                &m,
                "modgate_transparent_connections_total",
                &[("outcome", outcome)]
            ) >= 1.0,
            "{outcome}\n{m}"
        );
    }
}
