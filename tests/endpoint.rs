//! modgate's GOPROXY endpoint (`endpoint.listen`): the go command with `GOPROXY` pointed at
//! modgate and no HTTPS_PROXY, credentials from netrc or the URL, public modules verified through
//! the endpoint's `/sumdb/`, private modules built from git, and refusals the go command shows.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use crate::e2e::{module_tree, write_app};
use crate::util::*;

const USER: &str = "ci";
const PASSWORD: &str = "s3cret-endpoint";

fn users() -> Vec<modgate::config::UserConfig> {
    vec![modgate::config::UserConfig {
        name: USER.into(),
        password_hash: modgate::ingress::auth::hash_password(PASSWORD),
    }]
}

/// Go `v` with only GOPROXY (and the CA) pointing at modgate: no HTTPS_PROXY.
fn go_via(
    v: &str,
    args: &[&str],
    dir: &Path,
    home: &Path,
    goproxy: &str,
    ca: &Path,
    extra: &[(&str, &str)],
) -> std::process::Output {
    std::fs::create_dir_all(home).unwrap();
    let mut cmd = go_command(v, dir, home);
    cmd.args(args)
        .env("GOFLAGS", "-mod=mod -modcacherw")
        .env("GOPROXY", goproxy)
        .env("SSL_CERT_FILE", ca)
        .envs(extra.iter().copied());
    tokio::task::block_in_place(|| cmd.output().unwrap())
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// `curl -i` against the endpoint; returns the status line and headers, and the body.
fn curl(url: &str, ca: &Path, extra: &[&str]) -> (String, String) {
    let out = Command::new(tool("curl"))
        .args(["-sS", "-i", "--cacert"])
        .arg(ca)
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    let all = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let (head, body) = all.split_once("\n\n").unwrap_or((&all, ""));
    (head.to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_go_command_uses_the_endpoint_as_its_goproxy_with_netrc_or_url_credentials() {
    let ca = TestCa::new();
    let tree = tempfile::tempdir().unwrap();
    module_tree(tree.path());
    let proxy = Upstream::tls(&ca, files_dir(tree.path().to_path_buf())).await;
    let sumdb = SumDb::start(&ca, tree.path());
    let (proxy_base, sumdb_base) = (proxy.base_url(), sumdb.base_url());
    let vkey = sumdb.vkey.clone();
    let gw = TestGateway::start(&ca, move |c| {
        c.upstream
            .overrides
            .insert("proxy.golang.org".into(), proxy_base);
        c.upstream
            .overrides
            .insert("sum.golang.org".into(), sumdb_base);
        c.sumdb.verify = "sum.golang.org".into();
        c.sumdb.keys = vec![vkey];
        c.auth.users = users();
        c.endpoint.listen = Some("127.0.0.1:0".parse().unwrap());
        c.endpoint.path_prefix = "/go".into();
    })
    .await;
    let port = gw.gw().endpoint_addr().unwrap().port();
    let work = tempfile::tempdir().unwrap();

    // Go 1.21 too: the first go command with toolchain switches, which go through GOPROXY.
    for v in ["1.19", "1.21", "1.23"] {
        // By name, credentials in ~/.netrc; by address, credentials in the URL.
        let ways = [
            ("netrc", format!("https://localhost:{port}/go")),
            (
                "url",
                format!("https://{USER}:{PASSWORD}@127.0.0.1:{port}/go"),
            ),
        ];
        for (way, goproxy) in ways {
            let home = work.path().join(format!("home-{v}-{way}"));
            std::fs::create_dir_all(&home).unwrap();
            if way == "netrc" {
                // Go 1.19 matches a netrc machine by host name; Go 1.20 on, by the host and
                // port as GOPROXY has them.
                std::fs::write(
                    home.join(".netrc"),
                    format!(
                        "machine localhost:{port} login {USER} password {PASSWORD}\nmachine localhost login {USER} password {PASSWORD}\n"
                    ),
                )
                .unwrap();
            }
            let app = work.path().join(format!("app-{v}-{way}"));
            write_app(&app);
            let out = go_via(
                v,
                &["build", "-o", "app", "."],
                &app,
                &home,
                &goproxy,
                &gw.ca_path,
                &[("GOSUMDB", &sumdb.vkey)],
            );
            assert!(out.status.success(), "Go {v}, {way}: {}", text(&out));
            let run = Command::new(app.join("app")).output().unwrap();
            assert_eq!(
                String::from_utf8_lossy(&run.stdout).trim(),
                "hello, verified world!",
                "Go {v}, {way}"
            );
        }
    }
    // The go command asked the checksum database through the endpoint (its /sumdb/ proxying),
    // and everything was counted under entry="endpoint".
    let m = gw.metrics().await;
    for route in ["public", "sumdb"] {
        assert!(
            metric(
                &m,
                "modgate_request_duration_seconds_count",
                &[("route", route), ("entry", "endpoint"), ("status", "2xx")]
            ) >= 2.0,
            "{route}: {m}"
        );
    }
    assert!(
        sumdb
            .requests()
            .iter()
            .any(|p| p == "/lookup/example.com/greet@v1.1.0")
    );
    // Six builds, one fetch of each file from the upstream (the cache and single-flight are
    // the interception's).
    let zips = proxy
        .paths()
        .iter()
        .filter(|p| p.as_str() == "/example.com/greet/@v/v1.1.0.zip")
        .count();
    assert_eq!(zips, 1, "{:?}", proxy.paths());

    // Without credentials: a 401 with both challenges, which the go command shows.
    let home = work.path().join("home-anonymous");
    let app = work.path().join("app-anonymous");
    write_app(&app);
    let out = go_via(
        "1.23",
        &["mod", "download", "example.com/hello@v1.0.0"],
        &app,
        &home,
        &format!("https://localhost:{port}/go"),
        &gw.ca_path,
        &[("GOSUMDB", &sumdb.vkey)],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("401 Unauthorized") && text(&out).contains("authentication required"),
        "{}",
        text(&out)
    );
    let url = format!("https://localhost:{port}/go/example.com/hello/@v/list");
    let (head, body) = curl(&url, &gw.ca_path, &[]);
    assert!(
        head.starts_with("HTTP/2 401") || head.starts_with("HTTP/1.1 401"),
        "{head}"
    );
    let head_lc = head.to_ascii_lowercase();
    assert!(
        head_lc.contains("www-authenticate: basic realm=\"modgate\""),
        "{head}"
    );
    assert!(
        head_lc.contains("www-authenticate: bearer realm=\"modgate\""),
        "{head}"
    );
    assert!(body.contains("authentication required"), "{body}");
    let (head, _) = curl(&url, &gw.ca_path, &["-u", &format!("{USER}:wrong")]);
    assert!(head.contains(" 401"), "{head}");
    // A bearer token (GOAUTH's form) and Basic both pass.
    let bearer = format!("Authorization: Bearer {PASSWORD}");
    let (head, body) = curl(&url, &gw.ca_path, &["-H", &bearer]);
    assert!(head.contains(" 200"), "{head}");
    assert_eq!(body.trim(), "v1.0.0");
    // Outside the prefix: a local 404 naming it; a malformed path: a 400 with the reason.
    let (head, body) = curl(
        &format!("https://localhost:{port}/example.com/hello/@v/list"),
        &gw.ca_path,
        &["-u", &format!("{USER}:{PASSWORD}")],
    );
    assert!(head.contains(" 404"), "{head}");
    assert!(body.contains("under /go/"), "{body}");
    let (head, body) = curl(
        &format!("https://localhost:{port}/go/example.com/Hello/@v/v1.0.0.info"),
        &gw.ca_path,
        &["-u", &format!("{USER}:{PASSWORD}")],
    );
    assert!(head.contains(" 400"), "{head}");
    assert!(body.contains("invalid"), "{body}");
    // A TLS client naming a server the endpoint does not serve is refused.
    let out = Command::new(tool("curl"))
        .args(["-sS", "--cacert"])
        .arg(&gw.ca_path)
        .args([
            "--resolve",
            &format!("proxy.golang.org:{port}:127.0.0.1"),
            &format!("https://proxy.golang.org:{port}/go/example.com/hello/@v/list"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let m = gw.metrics().await;
    assert!(
        metric(
            &m,
            "modgate_tls_failures_total",
            &[("reason", "sni_mismatch")]
        ) >= 1.0
    );
    assert!(metric(&m, "modgate_proxy_auth_failures_total", &[]) >= 2.0);
    assert!(metric(&m, "modgate_connections_total", &[("kind", "endpoint")]) >= 4.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn private_modules_come_through_the_endpoint_built_from_git_and_never_leave() {
    let ca = TestCa::new();
    let base = tempfile::tempdir().unwrap();
    let repos = crate::private::build_repos(base.path());
    let git_log = Arc::new(std::sync::Mutex::new(vec![]));
    let git_host = Upstream::tls(
        &ca,
        crate::private::internal_git_host(repos, git_log.clone()),
    )
    .await;
    let public = Upstream::tls(&ca, fixed("not here")).await;
    let (gb, pb) = (git_host.base_url(), public.base_url());
    let pw_dir = base.path().to_path_buf();
    let gw = TestGateway::start(&ca, move |c| {
        c.private.routes = vec![crate::private::route(&pw_dir, crate::private::PASSWORD)];
        c.upstream.overrides.insert("git.internal".into(), gb);
        c.upstream.overrides.insert("proxy.golang.org".into(), pb);
        c.endpoint.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let port = gw.gw().endpoint_addr().unwrap().port();
    let queries = [
        "git.corp.example/team/alpha@v1.0.0",
        "git.corp.example/team/alpha@feature",
        "git.corp.example/team/major/v2@v2.0.0",
    ];
    let download = |v: &str, home: &Path, env: &[(&str, &str)]| {
        let mut args = vec!["mod", "download", "-json"];
        args.extend(queries);
        let out = go_via(
            v,
            &args,
            base.path(),
            home,
            &format!("https://127.0.0.1:{port}"),
            &gw.ca_path,
            env,
        );
        assert!(out.status.success(), "Go {v}: {}", text(&out));
        serde_json::Deserializer::from_slice(&out.stdout)
            .into_iter::<serde_json::Value>()
            .map(|v| {
                let v = v.unwrap();
                (
                    v["Version"].as_str().unwrap().to_string(),
                    v["Sum"].as_str().unwrap().to_string(),
                    v["GoModSum"].as_str().unwrap().to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    // Unauthenticated on loopback (no auth.users): allowed. The go command has no GOPRIVATE and
    // no credentials; GONOSUMDB keeps the private paths out of the checksum database.
    let mut results = vec![];
    for v in GO_VERSIONS {
        let home = base.path().join(format!("home-{v}"));
        results.push(download(v, &home, &[("GONOSUMDB", "git.corp.example")]));
    }
    assert_eq!(
        results[0], results[1],
        "both go commands get the same hashes"
    );
    assert_eq!(results[0][1].0, "v1.1.0", "@feature resolves to its tag");
    // Through interception (HTTPS_PROXY), the same hashes: the same builds and pins.
    let home = base.path().join("home-intercepted");
    let out = go_via(
        "1.19",
        &["mod", "download", "-json", queries[0]],
        base.path(),
        &home,
        "https://proxy.golang.org",
        &gw.ca_path,
        &[
            ("GONOSUMDB", "git.corp.example"),
            ("HTTPS_PROXY", &format!("http://{}", gw.proxy)),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&results[0][0].1),
        "{}",
        text(&out)
    );
    // The git host saw modgate's credentials; the public proxy never saw a private path.
    assert!(
        git_log
            .lock()
            .unwrap()
            .iter()
            .any(|(p, authorized)| p.contains("team/alpha") && *authorized)
    );
    assert!(
        public.paths().iter().all(|p| !p.contains("corp.example")),
        "{:?}",
        public.paths()
    );
    let m = gw.metrics().await;
    assert!(
        metric(
            &m,
            "modgate_request_duration_seconds_count",
            &[("route", "private"), ("entry", "endpoint")]
        ) >= 6.0,
        "{m}"
    );
    assert!(
        metric(&m, "modgate_integrity_pins_total", &[("event", "pinned")]) >= 3.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_http_endpoint_serves_public_modules_and_refuses_private_ones() {
    let ca = TestCa::new();
    let tree = tempfile::tempdir().unwrap();
    module_tree(tree.path());
    let proxy = Upstream::tls(&ca, files_dir(tree.path().to_path_buf())).await;
    let base = proxy.base_url();
    let gw = TestGateway::start(&ca, move |c| {
        c.upstream.overrides.insert("proxy.golang.org".into(), base);
        c.modules.private = modgate::config::PatternList(vec!["corp.example".into()]);
        c.endpoint.listen = Some("127.0.0.1:0".parse().unwrap());
        c.endpoint.plain_http = true;
    })
    .await;
    let port = gw.gw().endpoint_addr().unwrap().port();
    let work = tempfile::tempdir().unwrap();
    let out = go_via(
        "1.23",
        &["mod", "download", "-json", "example.com/hello@v1.0.0"],
        work.path(),
        &work.path().join("home"),
        &format!("http://127.0.0.1:{port}"),
        &gw.ca_path,
        &[("GOSUMDB", "off"), ("GOINSECURE", "*")],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = go_via(
        "1.23",
        &["mod", "download", "-json", "corp.example/secret@v1.0.0"],
        work.path(),
        &work.path().join("home"),
        &format!("http://127.0.0.1:{port}"),
        &gw.ca_path,
        &[("GOSUMDB", "off"), ("GOINSECURE", "*")],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("is private"), "{}", text(&out));
    assert!(
        proxy.paths().iter().all(|p| !p.contains("corp.example")),
        "{:?}",
        proxy.paths()
    );
}
