//! modgate's own checksum database (`sumdb.serve`) against the real go command: public
//! versions proven against a checksum database and private versions pinned from git, served as
//! one Go checksum database, kept across restarts, and a force-pushed private tag refused.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use crate::private::{PASSWORD, build_repos, internal_git_host, route};
use crate::util::*;

const OWN: &str = "sum.corp.example";

/// `go mod download -json` of `queries` as a fresh agent would run it with `home`, through
/// `gw`, with `env` added.
fn download(
    gw: &TestGateway,
    home: &Path,
    queries: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    std::fs::create_dir_all(home).unwrap();
    let mut cmd = Command::new(tool("go"));
    cmd.args(["mod", "download", "-json"])
        .args(queries)
        .current_dir(home)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("GOPATH", home.join("gopath"))
        .env("GOMODCACHE", home.join("modcache"))
        .env("GOCACHE", home.join("gocache"))
        .env("GOFLAGS", "-modcacherw")
        .env("HTTPS_PROXY", format!("http://{}", gw.proxy))
        .env("SSL_CERT_FILE", &gw.ca_path)
        .envs(env.iter().copied());
    tokio::task::block_in_place(|| cmd.output().unwrap())
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// The GOSUMDB line of the gateway's agent set-up.
fn gosumdb(gw: &TestGateway) -> String {
    gw.gw()
        .agent_env()
        .lines()
        .find_map(|l| l.strip_prefix("export GOSUMDB="))
        .expect("the agent set-up names modgate's checksum database")
        .to_string()
}

/// What both tests serve: a public module (two versions) in a GOPROXY tree and in the fixture
/// checksum database, and the internal git host with the private repositories.
struct Fixture {
    base: tempfile::TempDir,
    sumdb: SumDb,
    proxy: Upstream,
    repos: std::path::PathBuf,
    git_host: Upstream,
    route: modgate::config::PrivateRouteConfig,
}

impl Fixture {
    async fn new(ca: &TestCa) -> Fixture {
        let base = tempfile::tempdir().unwrap();
        let tree = base.path().join("goproxy");
        for v in ["v1.0.0", "v1.1.0"] {
            write_module(
                &tree,
                "example.com/pub",
                v,
                "module example.com/pub\n\ngo 1.19\n",
                &[("pub.go", "package pub\n")],
            );
        }
        let sumdb = SumDb::start(ca, &tree);
        let proxy = Upstream::tls(ca, files_dir(tree.clone())).await;
        let repos = build_repos(base.path());
        let git_host = Upstream::tls(ca, internal_git_host(repos.clone(), Arc::default())).await;
        let route = route(base.path(), PASSWORD);
        Fixture {
            base,
            sumdb,
            proxy,
            repos,
            git_host,
            route,
        }
    }

    /// A gateway configuration for the fixture, serving modgate's own database, with its CA
    /// (so its signing key) in `ca_dir` and its data in `data`.
    fn configure(
        &self,
        ca_dir: &Path,
        data: &Path,
    ) -> impl FnOnce(&mut modgate::config::Config) + use<> {
        let (pb, sb, gb, vkey) = (
            self.proxy.base_url(),
            self.sumdb.base_url(),
            self.git_host.base_url(),
            self.sumdb.vkey.clone(),
        );
        let (ca_dir, data, route) = (ca_dir.to_path_buf(), data.to_path_buf(), self.route.clone());
        move |c| {
            c.upstream.overrides.insert("proxy.golang.org".into(), pb);
            c.upstream.overrides.insert("sum.golang.org".into(), sb);
            c.upstream.overrides.insert("git.internal".into(), gb);
            c.sumdb.verify = "sum.golang.org".into();
            c.sumdb.keys = vec![vkey];
            c.sumdb.serve = OWN.into();
            c.private.routes = vec![route];
            c.private.mirror_ttl = std::time::Duration::from_millis(1);
            c.ca.dir = ca_dir;
            c.storage.data_dir = data;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_go_command_verifies_public_and_private_modules_against_modgates_own_database() {
    let ca = TestCa::new();
    let fx = Fixture::new(&ca).await;
    let Fixture {
        base,
        sumdb,
        proxy,
        repos,
        ..
    } = &fx;
    let (ca_dir, data) = (base.path().join("ca"), base.path().join("data"));
    let start = || {
        let configure = fx.configure(&ca_dir, &data);
        TestGateway::start(&ca, move |c| {
            configure(c);
            c.sumdb.nosumdb = modgate::config::PatternList(vec!["example.com/exempt".into()]);
        })
    };
    let work = tempfile::tempdir().unwrap();

    // 1. An agent with only HTTPS_PROXY, the CA and GOSUMDB set (no GOPRIVATE, no GONOSUMDB):
    // the go command verifies the public and the private module against modgate's database,
    // which it reaches through the proxy host (`/sumdb/<name>/`).
    let gw = start().await;
    let own = gosumdb(&gw);
    assert!(own.starts_with(&format!("{OWN}+")), "{own}");
    let agent = work.path().join("agent");
    let first = [
        "example.com/pub@v1.0.0",
        "git.corp.example/team/alpha@v1.0.0",
    ];
    let out = download(&gw, &agent, &first, &[("GOSUMDB", &own)]);
    assert!(out.status.success(), "{}", text(&out));
    let m = gw.metrics().await;
    let lookups = |m: &str, outcome: &str| {
        metric(
            m,
            "modgate_own_sumdb_lookups_total",
            &[("outcome", outcome)],
        )
    };
    assert!(
        lookups(&m, "found") + lookups(&m, "added") >= 2.0,
        "the go command looked both versions up in modgate's database: {m}"
    );
    assert_eq!(metric(&m, "modgate_own_sumdb_records", &[]), 2.0, "{m}");
    // The private path went nowhere public.
    assert!(!proxy.paths().iter().any(|p| p.contains("corp.example")));
    assert!(!sumdb.requests().iter().any(|p| p.contains("corp.example")));

    // The database is a real one on its own host too: the go command with the database's
    // URL given (no proxy), a fresh agent, the same hashes.
    let direct = format!("{own} https://{OWN}");
    let out2 = download(
        &gw,
        &work.path().join("agent-direct"),
        &first,
        &[("GOSUMDB", &direct)],
    );
    assert!(out2.status.success(), "{}", text(&out2));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("Sum"))
            .collect::<Vec<_>>(),
        String::from_utf8_lossy(&out2.stdout)
            .lines()
            .filter(|l| l.contains("Sum"))
            .collect::<Vec<_>>()
    );
    // Its signed head verifies with the key the agent set-up prints.
    let (status, _, latest) = gw.get(&format!("{OWN}:443"), "/latest", Alpn::H1).await;
    assert_eq!(status, 200);
    let key = modgate_core::gomod::note::VerifierKey::parse(&own).unwrap();
    let head = key
        .verify_note(std::str::from_utf8(&latest).unwrap())
        .unwrap();
    assert!(head.starts_with("go.sum database tree\n2\n"), "{head}");
    // A public path exempt from verification has no record, and says why; one that cannot be
    // proven (the checksum database has no such module) is a failure, counted as refused.
    let lookup = |path: &'static str| {
        let gw = &gw;
        async move {
            let (status, _, body) = gw
                .get(
                    "proxy.golang.org:443",
                    &format!("/sumdb/{OWN}/lookup/{path}"),
                    Alpn::H1,
                )
                .await;
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (status, said) = lookup("example.com/exempt@v1.0.0").await;
    assert_eq!(status, 404, "{said}");
    assert!(said.contains("exempt by sumdb.nosumdb"), "{said}");
    let (status, said) = lookup("example.com/unknown@v1.0.0").await;
    assert_eq!(status, 502, "{said}");
    assert!(
        said.contains("cannot verify example.com/unknown@v1.0.0"),
        "{said}"
    );
    let m = gw.metrics().await;
    assert_eq!(lookups(&m, "not_found"), 1.0, "{m}");
    assert_eq!(lookups(&m, "refused"), 1.0, "{m}");
    drop(gw);

    // 2. A restart serves the same tree and extends it: the first agent, which kept the tree
    // head it verified, checks that the new tree is consistent with it.
    let gw = start().await;
    assert_eq!(gosumdb(&gw), own, "the same key after a restart");
    let next = [
        "example.com/pub@v1.1.0",
        "git.corp.example/team/alpha@v1.1.0",
    ];
    let out = download(&gw, &agent, &next, &[("GOSUMDB", &own)]);
    assert!(out.status.success(), "{}", text(&out));
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "modgate_own_sumdb_records", &[]), 4.0, "{m}");
    drop(gw);

    // 3. The private tag is force-pushed, the cache lost, the gateway restarted: modgate
    // refuses the new content (its pin), so a fresh agent fails with both hashes named.
    let bare = repos.join("team/alpha");
    let v11 = git(&bare, &["rev-parse", "v1.1.0^{commit}"]);
    git(&bare, &["tag", "-f", "v1.0.0", v11.trim()]);
    std::fs::remove_dir_all(data.join("cache")).unwrap();
    let gw = start().await;
    let alpha = ["git.corp.example/team/alpha@v1.0.0"];
    let out = download(
        &gw,
        &work.path().join("agent-3"),
        &alpha,
        &[("GOSUMDB", &own)],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("changed since modgate first served it"),
        "{}",
        text(&out)
    );

    // 4. Even after an operator repins the version, agents verifying against modgate's
    // database keep refusing the new content: its record does not change.
    let cfg = base.path().join("ops.toml");
    std::fs::write(
        &cfg,
        format!(
            "[storage]\ndata_dir = \"{}\"\n[sumdb]\nserve = \"{OWN}\"\n",
            data.display()
        ),
    )
    .unwrap();
    let repin = modgate_command()
        .args(["integrity", "repin", alpha[0], "--reason", "re-tagged"])
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(repin.status.success(), "{}", text(&repin));
    let out = download(
        &gw,
        &work.path().join("agent-4"),
        &alpha,
        &[("GOSUMDB", &own)],
    );
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains("SECURITY ERROR") && said.contains(&format!("{OWN}: h1:")),
        "{said}"
    );
    // The same content without a checksum database is served (the operator's decision).
    let out = download(
        &gw,
        &work.path().join("agent-5"),
        &alpha,
        &[("GOSUMDB", "off")],
    );
    assert!(out.status.success(), "{}", text(&out));

    // `explain` names the record.
    let out = modgate_command()
        .args(["explain", "example.com/pub@v1.0.0", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let explained = text(&out);
    assert!(
        explained.contains(&format!("in {OWN} (verified sum.golang.org ")),
        "{explained}"
    );
}

/// Two replicas sharing one bucket (a real Garage): they pin each private version once for
/// both, and serve one checksum-database tree that either extends.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_sharing_a_bucket_agree_on_pins_and_on_one_tree() {
    let garage = crate::shared_cache::Garage::start();
    let ca = TestCa::new();
    let fx = Fixture::new(&ca).await;
    let Fixture { base, repos, .. } = &fx;
    // One CA directory (so one signing key, as replicas share the CA Secret), two data dirs.
    let ca_dir = base.path().join("ca");
    let replica = |data: &str| {
        let configure = fx.configure(&ca_dir, &base.path().join(data));
        let garage = &garage;
        TestGateway::start(&ca, move |c| {
            configure(c);
            garage.configure(c);
        })
    };
    let a = replica("data-a").await;
    let b = replica("data-b").await;
    let own = gosumdb(&a);
    assert_eq!(gosumdb(&b), own);
    let work = tempfile::tempdir().unwrap();
    let agent = work.path().join("agent");

    // 1. Through replica A, then (the same agent, which keeps the tree head it verified)
    // through replica B: B's tree extends A's, or the go command would refuse it.
    let first = [
        "example.com/pub@v1.0.0",
        "git.corp.example/team/alpha@v1.0.0",
    ];
    let out = download(&a, &agent, &first, &[("GOSUMDB", &own)]);
    assert!(out.status.success(), "{}", text(&out));
    let next = [
        "example.com/pub@v1.1.0",
        "git.corp.example/team/alpha@v1.1.0",
    ];
    let out = download(&b, &agent, &next, &[("GOSUMDB", &own)]);
    assert!(out.status.success(), "{}", text(&out));
    let m = b.metrics().await;
    assert_eq!(metric(&m, "modgate_own_sumdb_records", &[]), 4.0, "{m}");
    // A serves the tree B extended.
    let key = modgate_core::gomod::note::VerifierKey::parse(&own).unwrap();
    let (status, _, latest) = a.get(&format!("{OWN}:443"), "/latest", Alpn::H1).await;
    assert_eq!(status, 200);
    let head = key
        .verify_note(std::str::from_utf8(&latest).unwrap())
        .unwrap();
    assert!(head.starts_with("go.sum database tree\n4\n"), "{head}");

    // A replica that served alone before (its record 0 is another version than the bucket's)
    // refuses to join: it would serve another tree.
    let solo = |bucket: bool| {
        let configure = fx.configure(&ca_dir, &base.path().join("data-solo"));
        let garage = &garage;
        TestGateway::try_start(&ca, move |c| {
            configure(c);
            if bucket {
                garage.configure(c);
            }
        })
    };
    let alone = solo(false).await.unwrap();
    let (status, _, body) = alone
        .get(
            &format!("{OWN}:443"),
            "/lookup/example.com/pub@v1.1.0",
            Alpn::H1,
        )
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).starts_with("0\n"));
    drop(alone);
    let Err(refused) = solo(true).await else {
        panic!("a disagreeing log cannot join");
    };
    assert!(
        format!("{refused:#}").contains("disagree at record 0"),
        "{refused:#}"
    );

    // 2. The tag A pinned is force-pushed. B never built it, but the fleet's pin is in the
    // bucket: B refuses the new content too.
    let bare = repos.join("team/alpha");
    let v11 = git(&bare, &["rev-parse", "v1.1.0^{commit}"]);
    git(&bare, &["tag", "-f", "v1.0.0", v11.trim()]);
    let alpha = ["git.corp.example/team/alpha@v1.0.0"];
    let off = [("GOSUMDB", "off")];
    let out = download(&b, &work.path().join("agent-2"), &alpha, &off);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("changed since modgate first served it"),
        "{}",
        text(&out)
    );

    // 3. A repin with the shared bucket in the configuration clears the fleet's pin: B serves
    // (and pins) the new content.
    let cfg = base.path().join("ops.toml");
    let mut ops = modgate::config::Config::default();
    ops.storage.data_dir = base.path().join("data-b");
    garage.configure(&mut ops);
    std::fs::write(&cfg, toml::to_string(&ops).unwrap()).unwrap();
    let repin = modgate_command()
        .args(["integrity", "repin", alpha[0], "--reason", "re-tagged"])
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(repin.status.success(), "{}", text(&repin));
    assert!(
        text(&repin).contains("pins in the shared bucket"),
        "{}",
        text(&repin)
    );
    let out = download(&b, &work.path().join("agent-3"), &alpha, &off);
    assert!(out.status.success(), "{}", text(&out));
}
