//! `modgate warm FILE`: pre-loads the cache of a running gateway with every module a go.sum,
//! go.mod or module@version list names, through the gateway's normal routes, so that an office
//! can build offline afterwards.
//!
//! Each module version is fetched like the go command would (`.info`, `.mod`, `.zip`, or only
//! `.mod` for go.sum's `/go.mod` lines) over CONNECT and TLS to the gateway. Public modules are
//! then checked against the checksum database, also through the gateway (which caches the
//! lookup): the signed note must verify with the database key, and the `h1:` hashes of the zip
//! and go.mod must equal the database record (and go.sum's, when the input is a go.sum). The
//! Merkle inclusion proof is left to the go command, which checks it whenever it consults the
//! database itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use modgate_core::gomod::{dirhash, path as modpath};

pub use modgate_core::gomod::note::{NoteError, SUM_GOLANG_ORG_KEY, VerifierKey};

/// One module version to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub module: String,
    pub version: String,
    /// Fetch the zip too (not only the go.mod).
    pub zip: bool,
    /// Hashes the input file recorded (go.sum).
    pub zip_h1: Option<String>,
    pub mod_h1: Option<String>,
}

/// Reads a go.sum, a go.mod or a list of `module@version` lines (by file name, then content).
pub fn parse_input(name: &str, text: &str) -> anyhow::Result<Vec<Want>> {
    let mut wants: BTreeMap<(String, String), Want> = BTreeMap::new();
    fn add<'m>(
        wants: &'m mut BTreeMap<(String, String), Want>,
        module: &str,
        version: &str,
        line: usize,
    ) -> anyhow::Result<&'m mut Want> {
        modpath::check_path(module)
            .map_err(|e| anyhow::anyhow!("line {line}: invalid module path {module:?}: {e}"))?;
        if !modgate_core::gomod::version::is_valid(version) {
            return Err(anyhow::anyhow!(
                "line {line}: invalid version {version:?} for {module}"
            ));
        }
        Ok(wants
            .entry((module.to_string(), version.to_string()))
            .or_insert_with(|| Want {
                module: module.to_string(),
                version: version.to_string(),
                zip: false,
                zip_h1: None,
                mod_h1: None,
            }))
    }
    let base = name.rsplit('/').next().unwrap_or(name);
    let kind = if base.ends_with(".sum") {
        "sum"
    } else if base.ends_with(".mod") {
        "mod"
    } else {
        "list"
    };
    match kind {
        "sum" => {
            for (i, line) in text.lines().enumerate() {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.is_empty() {
                    continue;
                }
                let [module, version, hash] = fields[..] else {
                    return Err(anyhow::anyhow!(
                        "line {}: expected \"module version h1:hash\"",
                        i + 1
                    ));
                };
                match version.strip_suffix("/go.mod") {
                    Some(v) => add(&mut wants, module, v, i + 1)?.mod_h1 = Some(hash.to_string()),
                    None => {
                        let w = add(&mut wants, module, version, i + 1)?;
                        w.zip = true;
                        w.zip_h1 = Some(hash.to_string());
                    }
                }
            }
        }
        "mod" => {
            let mut in_block = false;
            for (i, raw) in text.lines().enumerate() {
                let line = raw.split("//").next().unwrap_or("").trim();
                let spec = if in_block {
                    if line == ")" {
                        in_block = false;
                        continue;
                    }
                    line
                } else if let Some(rest) = line.strip_prefix("require") {
                    let rest = rest.trim();
                    if rest == "(" {
                        in_block = true;
                        continue;
                    }
                    rest
                } else {
                    continue;
                };
                let fields: Vec<&str> = spec.split_whitespace().collect();
                if let [module, version] = fields[..] {
                    let module = module.trim_matches('"');
                    add(&mut wants, module, version, i + 1)?.zip = true;
                }
            }
        }
        _ => {
            for (i, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let Some((module, version)) = line.split_once('@') else {
                    return Err(anyhow::anyhow!(
                        "line {}: expected module@version, got {line:?}",
                        i + 1
                    ));
                };
                add(&mut wants, module, version, i + 1)?.zip = true;
            }
        }
    }
    if wants.is_empty() {
        return Err(anyhow::anyhow!("{name}: no module versions found"));
    }
    Ok(wants.into_values().collect())
}

/// A `--proxy` value: `HOST:PORT`, `http://HOST:PORT`, or with credentials
/// `http://USER[:PASSWORD]@HOST:PORT` (user and password percent-decoded, as curl reads them).
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyArg {
    /// `HOST:PORT`.
    pub addr: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for ProxyArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyArg")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ProxyArg {
    /// Parses a `--proxy` value; the error never holds the password.
    pub fn parse(arg: &str) -> anyhow::Result<ProxyArg> {
        let rest = arg
            .strip_prefix("http://")
            .unwrap_or(arg)
            .trim_end_matches('/');
        let (userinfo, addr) = match rest.rsplit_once('@') {
            Some((u, a)) => (Some(u), a),
            None => (None, rest),
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| {
                    anyhow::anyhow!("--proxy: the user or password of {addr} is not UTF-8")
                })
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (Some(decode(user)?), Some(decode(pass)?)),
                None => (Some(decode(u)?), None),
            },
        };
        if user.as_deref() == Some("") {
            anyhow::bail!("--proxy: empty user name before @ in {addr}");
        }
        Ok(ProxyArg {
            addr: addr.to_string(),
            user,
            password,
        })
    }
}

/// The `Proxy-Authorization` value for `user` and `password` (Basic).
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Where and how to fetch.
#[derive(Clone)]
pub struct Options {
    pub proxy: SocketAddr,
    /// `Proxy-Authorization` for the CONNECTs, when the gateway has proxy users.
    pub proxy_auth: Option<String>,
    pub roots: Arc<rustls::RootCertStore>,
    /// Host of the GOPROXY the gateway serves (normally proxy.golang.org).
    pub goproxy_host: String,
    /// Checksum database key; None skips verification (GOSUMDB=off).
    pub sumdb: Option<VerifierKey>,
    /// Module paths not checked against the database (GONOSUMDB-style patterns).
    pub nosumdb: modgate_core::policy::patterns::Patterns,
    pub concurrency: usize,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("proxy", &self.proxy)
            .field(
                "proxy_auth",
                &self.proxy_auth.as_ref().map(|_| "<redacted>"),
            )
            .field("goproxy_host", &self.goproxy_host)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

/// What happened to one module version.
#[derive(Debug)]
pub struct Outcome {
    pub want: Want,
    pub bytes: u64,
    /// Verified against the checksum database.
    pub verified: bool,
    pub error: Option<String>,
}

/// A connection through the gateway to one host, speaking HTTP/1.1 with keep-alive.
struct Conn {
    send: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: String,
}

async fn open(opts: &Options, host: &str) -> anyhow::Result<Conn> {
    let mut tcp = TcpStream::connect(opts.proxy)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the gateway at {}: {e}", opts.proxy))?;
    let _ = tcp.set_nodelay(true);
    let auth = opts
        .proxy_auth
        .as_ref()
        .map(|a| format!("Proxy-Authorization: {a}\r\n"))
        .unwrap_or_default();
    tcp.write_all(
        format!("CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n{auth}\r\n").as_bytes(),
    )
    .await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 || tcp.read(&mut byte).await? == 0 {
            return Err(anyhow::anyhow!("the gateway closed the CONNECT"));
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    if head.starts_with("HTTP/1.1 407") || head.starts_with("HTTP/1.0 407") {
        return Err(anyhow::anyhow!(
            "the gateway requires proxy credentials (407){}: give them as --proxy http://USER@HOST:PORT, with the password in MODGATE_PROXY_PASSWORD or typed at the prompt",
            if opts.proxy_auth.is_some() {
                " and refused the ones given"
            } else {
                ""
            }
        ));
    }
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(anyhow::anyhow!(
            "the gateway refused CONNECT {host}: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(opts.roots.clone())
    .with_no_client_auth();
    let name = ServerName::try_from(host.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| {
            anyhow::anyhow!("TLS to {host} through the gateway: {e} (is --ca the gateway's CA?)")
        })?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(Conn {
        send,
        host: host.to_string(),
    })
}

impl Conn {
    async fn get(&mut self, path: &str) -> anyhow::Result<Bytes> {
        let req = Request::get(path)
            .header(http::header::HOST, &self.host)
            .header(
                http::header::USER_AGENT,
                concat!("modgate-warm/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())?;
        self.send.ready().await?;
        let resp = self.send.send_request(req).await?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("https://{}{path}: {e}", self.host))?
            .to_bytes();
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&body);
            return Err(anyhow::anyhow!(
                "https://{}{path}: {status}: {}",
                self.host,
                text.lines().next().unwrap_or("").trim()
            ));
        }
        Ok(body)
    }
}

/// Fetches (and verifies) one module version.
async fn warm_one(opts: &Options, want: &Want) -> Outcome {
    let mut out = Outcome {
        want: want.clone(),
        bytes: 0,
        verified: false,
        error: None,
    };
    if let Err(e) = warm_inner(opts, want, &mut out).await {
        out.error = Some(format!("{e:#}"));
    }
    out
}

async fn warm_inner(opts: &Options, want: &Want, out: &mut Outcome) -> anyhow::Result<()> {
    let esc_m = modpath::escape_path(&want.module)?;
    let esc_v = modpath::escape_version(&want.version)?;
    let mut conn = open(opts, &opts.goproxy_host).await?;
    let base = format!("/{esc_m}/@v/{esc_v}");
    let gomod = conn.get(&format!("{base}.mod")).await?;
    out.bytes += gomod.len() as u64;
    let mod_h1 = dirhash::hash_go_mod(&gomod);
    let mut zip_h1 = None;
    if want.zip {
        out.bytes += conn.get(&format!("{base}.info")).await?.len() as u64;
        let zip = conn.get(&format!("{base}.zip")).await?;
        out.bytes += zip.len() as u64;
        zip_h1 = Some(
            dirhash::hash_zip(std::io::Cursor::new(&zip[..]))
                .map_err(|e| anyhow::anyhow!("{}@{}: bad zip: {e}", want.module, want.version))?,
        );
    }
    let mismatch = |what: &str, got: &str, expected: &str, source: &str| {
        anyhow::anyhow!(
            "{}@{}: {what} hash mismatch: downloaded {got}, {source} has {expected}",
            want.module,
            want.version
        )
    };
    if let Some(expected) = &want.mod_h1
        && *expected != mod_h1
    {
        return Err(mismatch("go.mod", &mod_h1, expected, "go.sum"));
    }
    if let (Some(expected), Some(got)) = (&want.zip_h1, &zip_h1)
        && expected != got
    {
        return Err(mismatch("zip", got, expected, "go.sum"));
    }
    let Some(key) = &opts.sumdb else {
        return Ok(());
    };
    if opts.nosumdb.matching(&want.module).is_some() {
        return Ok(());
    }
    let mut db = open(opts, &key.name).await?;
    let answer = db
        .get(&format!("/lookup/{esc_m}@{esc_v}"))
        .await
        .map_err(|e| anyhow::anyhow!("checksum database: {e}"))?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let Some(split) = answer.find("\n\n") else {
        return Err(anyhow::anyhow!("checksum database answer is malformed"));
    };
    key.verify_note(&answer[split + 2..])?;
    let record = &answer[..split];
    let find = |suffix: &str| {
        record.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[0] == want.module && f[1] == format!("{}{suffix}", want.version))
                .then(|| f[2].to_string())
        })
    };
    let db_mod = find("/go.mod")
        .ok_or_else(|| anyhow::anyhow!("checksum database record has no go.mod hash"))?;
    if db_mod != mod_h1 {
        return Err(mismatch("go.mod", &mod_h1, &db_mod, &key.name));
    }
    if let Some(got) = &zip_h1 {
        let db_zip =
            find("").ok_or_else(|| anyhow::anyhow!("checksum database record has no zip hash"))?;
        if &db_zip != got {
            return Err(mismatch("zip", got, &db_zip, &key.name));
        }
    }
    out.verified = true;
    Ok(())
}

/// Warms every wanted module version, `opts.concurrency` at a time, reporting progress.
pub async fn run(
    opts: Options,
    wants: Vec<Want>,
    progress: indicatif::ProgressBar,
) -> Vec<Outcome> {
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
    let opts = Arc::new(opts);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, want) in wants.into_iter().enumerate() {
        let (sem, opts, progress) = (sem.clone(), opts.clone(), progress.clone());
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let out = warm_one(&opts, &want).await;
            progress.set_message(format!("{}@{}", want.module, want.version));
            progress.inc(1);
            if let Some(e) = &out.error {
                progress.suspend(|| eprintln!("modgate warm: {e}"));
            }
            (i, out)
        });
    }
    let mut outcomes = Vec::new();
    while let Some(res) = tasks.join_next().await {
        if let Ok(item) = res {
            outcomes.push(item);
        }
    }
    progress.finish_and_clear();
    outcomes.sort_by_key(|(i, _)| *i);
    outcomes.into_iter().map(|(_, o)| o).collect()
}

/// The closing summary.
pub fn summary(outcomes: &[Outcome], elapsed: std::time::Duration) -> String {
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_none()).collect();
    let failed = outcomes.len() - ok.len();
    let bytes: u64 = ok.iter().map(|o| o.bytes).sum();
    let zips = ok.iter().filter(|o| o.want.zip).count();
    let verified = ok.iter().filter(|o| o.verified).count();
    let mut s = format!(
        "warmed {} of {} module versions ({} with source zips, {}) in {:.1}s; {} verified by the checksum database",
        ok.len(),
        outcomes.len(),
        zips,
        bytesize::ByteSize(bytes),
        elapsed.as_secs_f64(),
        verified
    );
    if failed > 0 {
        s.push_str(&format!("; {failed} failed:"));
        for o in outcomes {
            if let Some(e) = &o.error {
                s.push_str(&format!("\n  {}@{}: {e}", o.want.module, o.want.version));
            }
        }
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_sum_lines_merge_into_one_want_per_version() {
        let sum = "example.com/a v1.0.0 h1:zip=\nexample.com/a v1.0.0/go.mod h1:mod=\nexample.com/b v0.1.0/go.mod h1:bmod=\n";
        let w = parse_input("go.sum", sum).unwrap();
        assert_eq!(w.len(), 2);
        assert!(
            w[0].zip
                && w[0].zip_h1.as_deref() == Some("h1:zip=")
                && w[0].mod_h1.as_deref() == Some("h1:mod=")
        );
        assert!(!w[1].zip && w[1].mod_h1.as_deref() == Some("h1:bmod="));
    }

    #[test]
    fn go_mod_requires_single_and_block() {
        let m = "module x\n\ngo 1.19\n\nrequire example.com/a v1.2.3\n\nrequire (\n\texample.com/b v0.1.0 // indirect\n\t\"example.com/c\" v2.0.0+incompatible\n)\n";
        let w = parse_input("go.mod", m).unwrap();
        let names: Vec<String> = w
            .iter()
            .map(|w| format!("{}@{}", w.module, w.version))
            .collect();
        assert_eq!(
            names,
            [
                "example.com/a@v1.2.3",
                "example.com/b@v0.1.0",
                "example.com/c@v2.0.0+incompatible"
            ]
        );
        assert!(w.iter().all(|w| w.zip));
    }

    #[test]
    fn lists_and_bad_input() {
        let w = parse_input("modules.txt", "# comment\nexample.com/a@v1.0.0\n\n").unwrap();
        assert_eq!(w.len(), 1);
        assert!(
            parse_input("modules.txt", "example.com/a v1\n")
                .unwrap_err()
                .to_string()
                .contains("line 1")
        );
        assert!(parse_input("go.sum", "Bad..Path v1.0.0 h1:x\n").is_err());
        assert!(
            parse_input("modules.txt", "example.com/a@latest\n")
                .unwrap_err()
                .to_string()
                .contains("invalid version")
        );
        assert!(
            parse_input("go.mod", "module x\n")
                .unwrap_err()
                .to_string()
                .contains("no module versions")
        );
    }

    #[test]
    fn the_public_key_parses() {
        let k = VerifierKey::parse(SUM_GOLANG_ORG_KEY).unwrap();
        assert_eq!(k.name, "sum.golang.org");
        assert!(VerifierKey::parse("sum.golang.org+zz+AAAA").is_err());
    }

    #[test]
    fn proxy_arguments_with_and_without_credentials() {
        let p = ProxyArg::parse("http://ci%40corp:p%3Ass@gw.internal:3128/").unwrap();
        assert_eq!(p.addr, "gw.internal:3128");
        assert_eq!(p.user.as_deref(), Some("ci@corp"));
        assert_eq!(p.password.as_deref(), Some("p:ss"));
        assert!(!format!("{p:?}").contains("p:ss"));
        let p = ProxyArg::parse("builder@127.0.0.1:3128").unwrap();
        assert_eq!((p.user.as_deref(), p.password), (Some("builder"), None));
        let p = ProxyArg::parse("127.0.0.1:3128").unwrap();
        assert_eq!((p.addr.as_str(), p.user), ("127.0.0.1:3128", None));
        let err = ProxyArg::parse("http://:secret@h:1")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"), "{err}");
        assert_eq!(basic_auth("a", "b"), "Basic YTpi");
    }
}
