//! The module firewall (`[firewall]`, `[vulndb]`) with the real go command and Debian's
//! govulncheck: cooldown, deny, allow-list, per-user rules, report mode, refusals the go command
//! shows, GOPROXY lists that cannot fall through around a rule, direct fetches refused, the
//! vulnerability database mirrored (and served offline), and `modgate explain` / `policy check`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use modgate::config::{
    FirewallAction, FirewallGroup, FirewallRule, PatternList, RuleMode, UserConfig, VulnList,
};

use crate::util::*;

const DAY: Duration = Duration::from_secs(86_400);

fn days_ago(n: u64) -> SystemTime {
    SystemTime::now() - DAY * n as u32
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn date(t: SystemTime) -> String {
    rfc3339(t)[..10].to_string()
}

/// A module version whose `.info` Time is `age` days ago.
fn module(root: &Path, path: &str, v: &str, age: u64, pkg: &str, body: &str) {
    write_module_at(
        root,
        path,
        v,
        &format!("module {path}\n\ngo 1.19\n"),
        &[("m.go", &format!("package {pkg}\n\n{body}\n"))],
        &rfc3339(days_ago(age)),
    );
}

fn write_tree(root: &Path) {
    module(
        root,
        "example.com/lib",
        "v1.0.0",
        40,
        "lib",
        "func V() string { return \"v1.0.0\" }",
    );
    module(
        root,
        "example.com/lib",
        "v1.1.0",
        20,
        "lib",
        "func V() string { return \"v1.1.0\" }",
    );
    module(
        root,
        "example.com/lib",
        "v1.3.0-rc.1",
        30,
        "lib",
        "func V() string { return \"rc\" }",
    );
    // Published yesterday: inside the 7-day cooldown.
    module(
        root,
        "example.com/lib",
        "v1.2.0",
        1,
        "lib",
        "func V() string { return \"v1.2.0\" }",
    );
    module(
        root,
        "code.test/bad",
        "v1.0.0",
        40,
        "bad",
        "func V() int { return 1 }",
    );
    module(
        root,
        "example.com/watched",
        "v1.0.0",
        40,
        "watched",
        "func V() int { return 2 }",
    );
    module(
        root,
        "example.com/vuln",
        "v1.0.0",
        40,
        "vuln",
        "func Do() int { return 1 }",
    );
    module(
        root,
        "example.com/vuln",
        "v1.0.1",
        30,
        "vuln",
        "func Do() int { return 2 }",
    );
}

fn rule(id: &str) -> FirewallRule {
    FirewallRule {
        id: id.into(),
        ..FirewallRule::default()
    }
}

fn rules() -> Vec<FirewallRule> {
    vec![
        FirewallRule {
            modules: PatternList(vec!["code.test/bad".into()]),
            ..rule("no-bad")
        },
        FirewallRule {
            modules: PatternList(vec!["example.com/watched".into()]),
            mode: RuleMode::Report,
            ..rule("watch")
        },
        FirewallRule {
            groups: vec!["ci".into()],
            versions: vec!["prerelease".into(), "pseudo".into()],
            ..rule("ci-releases-only")
        },
        FirewallRule {
            vulnerable: Some(VulnList::Any("any".into())),
            ..rule("no-known-vulns")
        },
        FirewallRule {
            cooldown: Some(DAY * 7),
            ..rule("cooldown-7d")
        },
    ]
}

/// The Go vulnerability database for the test modules, in both of its formats: the current
/// one (`index/modules.json`, `ID/…`) that modgate's rules read, and the legacy one
/// (`index.json`, `<module>.json`) that Debian's govulncheck (2023) reads.
fn vulndb(root: &Path) {
    let entry = r#"{
  "schema_version": "1.3.1",
  "id": "GO-2026-0001",
  "modified": "2026-11-01T00:00:00Z",
  "published": "2026-11-01T00:00:00Z",
  "aliases": ["CVE-2026-0001"],
  "summary": "Do returns the wrong answer in example.com/vuln",
  "details": "Do returns 1.",
  "affected": [{
    "package": {"name": "example.com/vuln", "ecosystem": "Go"},
    "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": "1.0.1"}]}],
    "ecosystem_specific": {"imports": [{"path": "example.com/vuln", "symbols": ["Do"]}]}
  }],
  "references": [{"type": "FIX", "url": "https://example.com/vuln/fix"}],
  "database_specific": {"url": "https://pkg.go.dev/vuln/GO-2026-0001"}
}"#;
    let w = |p: &str, data: &str| {
        let f = root.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, data).unwrap();
    };
    w("index/db.json", r#"{"modified":"2026-11-01T00:00:00Z"}"#);
    w(
        "index/modules.json",
        r#"[{"path":"example.com/vuln","vulns":[{"id":"GO-2026-0001","modified":"2026-11-01T00:00:00Z","fixed":"1.0.1"}]}]"#,
    );
    w("ID/GO-2026-0001.json", entry);
    w(
        "index.json",
        r#"{"example.com/vuln":"2026-11-01T00:00:00Z"}"#,
    );
    w("ID/index.json", r#"["GO-2026-0001"]"#);
    w("aliases.json", r#"{"CVE-2026-0001":["GO-2026-0001"]}"#);
    w("example.com/vuln.json", &format!("[{entry}]"));
}

const PASSWORD: &str = "fw-secret";

fn users() -> Vec<UserConfig> {
    ["ci-bot", "alice"]
        .iter()
        .map(|n| UserConfig {
            name: n.to_string(),
            password_hash: modgate::ingress::auth::hash_password(PASSWORD),
        })
        .collect()
}

struct Fixture {
    gw: TestGateway,
    _tree: tempfile::TempDir,
    _db: tempfile::TempDir,
    proxy: Upstream,
    db: Option<Upstream>,
}

async fn fixture(ca: &TestCa) -> Fixture {
    fixture_with(ca, |_| {}).await
}

async fn fixture_with(ca: &TestCa, edit: impl FnOnce(&mut modgate::config::Config)) -> Fixture {
    let tree = tempfile::tempdir().unwrap();
    write_tree(tree.path());
    let db = tempfile::tempdir().unwrap();
    vulndb(db.path());
    let proxy = Upstream::tls(ca, files_dir(tree.path().to_path_buf())).await;
    let dbup = Upstream::tls(ca, files_dir(db.path().to_path_buf())).await;
    let (pb, db_base) = (proxy.base_url(), dbup.base_url());
    let gw = TestGateway::start(ca, move |c| {
        c.upstream.overrides.insert("proxy.golang.org".into(), pb);
        c.upstream.overrides.insert("vuln.go.dev".into(), db_base);
        c.auth.users = users();
        c.firewall.rules = rules();
        c.firewall.groups = vec![FirewallGroup {
            name: "ci".into(),
            users: vec!["ci-bot".into()],
            clients: vec![],
        }];
        // The public code host of the direct-fetch checks: a name that resolves nowhere, so
        // nothing can leave the machine even if the refusal were missing.
        c.firewall.code_hosts = vec!["code.test".into()];
        edit(c);
    })
    .await;
    Fixture {
        gw,
        _tree: tree,
        _db: db,
        proxy,
        db: Some(dbup),
    }
}

/// Go `v` through the gateway as `user`, GOSUMDB off (this is about the firewall).
fn go(
    v: &str,
    f: &Fixture,
    user: &str,
    args: &[&str],
    dir: &Path,
    extra: &[(&str, &str)],
) -> (bool, String) {
    let home = dir.join(".home");
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = go_command(v, dir, &home);
    cmd.args(args)
        .env("GOFLAGS", "-mod=mod -modcacherw")
        .env("GOSUMDB", "off")
        .env("GOPROXY", "https://proxy.golang.org")
        .env(
            "HTTPS_PROXY",
            format!("http://{user}:{PASSWORD}@{}", f.gw.proxy),
        )
        .env("SSL_CERT_FILE", &f.gw.ca_path)
        .envs(extra.iter().copied());
    let out = tokio::task::block_in_place(|| cmd.output().unwrap());
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn app(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("go.mod"), "module example.com/app\n\ngo 1.19\n").unwrap();
    std::fs::write(
        dir.join("main.go"),
        "package main\n\nimport (\n\t\"fmt\"\n\n\t\"example.com/lib\"\n)\n\nfunc main() { fmt.Println(lib.V()) }\n",
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_go_command_gets_only_what_the_rules_allow() {
    let ca = TestCa::new();
    let f = fixture(&ca).await;
    let work = tempfile::tempdir().unwrap();
    let yesterday = days_ago(1);
    for v in GO_VERSIONS {
        let dir = work.path().join(format!("app-{v}"));
        app(&dir);
        let run =
            |user: &str, args: &[&str], env: &[(&str, &str)]| go(v, &f, user, args, &dir, env);
        let succeeds = |user: &str, args: &[&str]| {
            let (ok, out) = run(user, args, &[]);
            assert!(ok, "go {v} {args:?} as {user}: {out}");
            out
        };
        let refused = |user: &str, args: &[&str], env: &[(&str, &str)], want: &str| {
            let (ok, out) = run(user, args, env);
            assert!(!ok, "go {v} {args:?} as {user} {env:?} succeeded: {out}");
            assert!(
                out.contains(want),
                "go {v} {args:?} {env:?}: {want:?} in\n{out}"
            );
            out
        };
        let versions = |user: &str| {
            succeeds(user, &["list", "-m", "-versions", "example.com/lib"])
                .trim()
                .to_string()
        };

        // Cooldown: v1.2.0 (published yesterday) is not listed, and @latest is v1.1.0, the
        // newest allowed release.
        assert_eq!(
            versions("alice"),
            "example.com/lib v1.0.0 v1.1.0 v1.3.0-rc.1",
            "go {v}"
        );
        succeeds("alice", &["get", "example.com/lib@latest"]);
        let gomod = std::fs::read_to_string(dir.join("go.mod")).unwrap();
        assert!(gomod.contains("example.com/lib v1.1.0"), "go {v}: {gomod}");
        succeeds("alice", &["build", "-o", "app", "."]);

        // Asked by version, it is refused with a 403 whose text the go command prints.
        let want = format!(
            "modgate: example.com/lib@v1.2.0 refused by rule cooldown-7d: published {}, allowed from {}; newest allowed: v1.1.0",
            date(yesterday),
            date(yesterday + DAY * 7)
        );
        let out = refused("alice", &["get", "example.com/lib@v1.2.0"], &[], &want);
        assert!(out.contains("403 Forbidden"), "go {v}: {out}");

        // Deny by module. A GOPROXY list with fallbacks does not get around it: 403 ends a `,`
        // list, and a `|` list (which falls through on any error) meets the refusal of direct
        // fetches.
        let bad = ["mod", "download", "code.test/bad@v1.0.0"];
        refused(
            "alice",
            &bad,
            &[],
            "modgate: code.test/bad@v1.0.0 refused by rule no-bad: module is denied",
        );
        let out = refused(
            "alice",
            &bad,
            &[("GOPROXY", "https://proxy.golang.org,direct")],
            "refused by rule no-bad",
        );
        assert!(!out.contains("go-get=1"), "go {v} went direct: {out}");
        let (ok, out) = run(
            "alice",
            &bad,
            &[("GOPROXY", "https://proxy.golang.org|direct")],
        );
        assert!(!ok, "go {v}: {out}");
        assert!(
            out.contains("refused by rule no-bad")
                || out.contains("fetched directly from its code host"),
            "go {v}: {out}"
        );

        // Per-user rules: ci-bot takes releases only.
        assert_eq!(
            versions("ci-bot"),
            "example.com/lib v1.0.0 v1.1.0",
            "go {v}"
        );
        refused(
            "ci-bot",
            &["mod", "download", "example.com/lib@v1.3.0-rc.1"],
            &[],
            "refused by rule ci-releases-only",
        );

        // Report mode: served, and counted as what would have been refused.
        succeeds("alice", &["mod", "download", "example.com/watched@v1.0.0"]);

        // Known vulnerabilities: refused, naming the advisory and the fix; the fix is taken.
        refused(
            "alice",
            &["get", "example.com/vuln@v1.0.0"],
            &[],
            "modgate: example.com/vuln@v1.0.0 refused by rule no-known-vulns: affected by GO-2026-0001, fixed in v1.0.1; newest allowed: v1.0.1",
        );
        succeeds("alice", &["get", "example.com/vuln@latest"]);
    }
    let m = f.gw.metrics().await;
    for (rule, verdict) in [
        ("cooldown-7d", "refused"),
        ("no-bad", "refused"),
        ("ci-releases-only", "refused"),
        ("watch", "reported"),
        ("no-known-vulns", "refused"),
        ("default", "allowed"),
    ] {
        assert!(
            metric(
                &m,
                "modgate_firewall_decisions_total",
                &[("rule", rule), ("verdict", verdict)]
            ) >= 1.0,
            "{rule} {verdict}"
        );
    }
    // Refused files never reached the upstream.
    let paths = f.proxy.paths();
    for p in [
        "/example.com/lib/@v/v1.2.0.zip",
        "/code.test/bad/@v/v1.0.0.zip",
        "/code.test/bad/@v/v1.0.0.mod",
        "/example.com/vuln/@v/v1.0.0.zip",
    ] {
        assert!(
            !paths.contains(&p.to_string()),
            "{p} was fetched: {paths:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_fetches_of_public_modules_are_refused_with_a_text_that_says_to_use_the_proxy() {
    let ca = TestCa::new();
    let f = fixture(&ca).await;
    let work = tempfile::tempdir().unwrap();
    for v in GO_VERSIONS {
        let dir = work.path().join(format!("direct-{v}"));
        app(&dir);
        for env in [
            vec![("GOPROXY", "direct")],
            vec![("GOPRIVATE", "code.test")],
            vec![("GONOPROXY", "code.test")],
        ] {
            let (ok, out) = go(
                v,
                &f,
                "alice",
                &["get", "code.test/tool@v1.0.0"],
                &dir,
                &env,
            );
            assert!(!ok, "go {v} {env:?}: {out}");
            assert!(
                out.contains("modgate: code.test/tool is being fetched directly from its code host, which the module firewall does not allow; fetch it through the module proxy instead"),
                "go {v} {env:?}: {out}"
            );
        }
    }
    // git itself (as the go command runs it for a known code host, with no go-get first) meets
    // the same refusal, and prints it.
    let out = std::process::Command::new(tool("git"))
        .args(["ls-remote", "https://code.test/tool.git"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", work.path())
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_SSL_CAINFO", &f.gw.ca_path)
        .env(
            "HTTPS_PROXY",
            format!("http://alice:{PASSWORD}@{}", f.gw.proxy),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("fatal: remote error: modgate: code.test/tool is being fetched directly from its code host"),
        "{text}"
    );
    // Other git requests get the 403.
    let out = std::process::Command::new(tool("curl"))
        .args(["-sS", "-i", "--cacert"])
        .arg(&f.gw.ca_path)
        .args([
            "--proxy",
            &format!("http://alice:{PASSWORD}@{}", f.gw.proxy),
            "-X",
            "POST",
            "https://code.test/tool.git/git-upload-pack",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("HTTP/1.1 403") || text.contains("\nHTTP/1.1 403"),
        "{text}"
    );
    assert!(
        text.contains("fetched directly from its code host"),
        "{text}"
    );
    let m = f.gw.metrics().await;
    assert!(metric(&m, "modgate_firewall_direct_refused_total", &[]) >= 7.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn govulncheck_works_behind_the_gateway_and_from_its_cache_when_the_database_is_down() {
    let ca = TestCa::new();
    let mut f = fixture(&ca).await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("scan");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("go.mod"),
        "module example.com/scan\n\ngo 1.19\n\nrequire example.com/vuln v1.0.0\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("main.go"),
        "package main\n\nimport (\n\t\"fmt\"\n\n\t\"example.com/vuln\"\n)\n\nfunc main() { fmt.Println(vuln.Do()) }\n",
    )
    .unwrap();
    // The vulnerable version is refused by the rules, so this module is fetched with them off
    // (by reloading the firewall without rules): govulncheck is about what is in the build.
    f.gw.reload_with(|c| c.firewall.rules.clear());
    let (ok, out) = go("1.19", &f, "alice", &["mod", "download", "all"], &dir, &[]);
    assert!(ok, "{out}");
    let m = f.gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "modgate_firewall_decisions_total",
            &[("rule", "no-known-vulns"), ("verdict", "refused")]
        ),
        0.0,
        "the reload took the rules away"
    );
    let govulncheck = |f: &Fixture, home: &str| {
        let home = work.path().join(home);
        std::fs::create_dir_all(&home).unwrap();
        let mut cmd = std::process::Command::new(tool("govulncheck"));
        go_env(&mut cmd, &dir, &home);
        cmd.arg("./...")
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    go_tool("1.19").parent().unwrap().display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env("GOFLAGS", "-mod=mod -modcacherw")
            .env("GOSUMDB", "off")
            .env("GOPROXY", "https://proxy.golang.org")
            .env(
                "HTTPS_PROXY",
                format!("http://alice:{PASSWORD}@{}", f.gw.proxy),
            )
            .env("SSL_CERT_FILE", &f.gw.ca_path);
        let out = tokio::task::block_in_place(|| cmd.output().unwrap());
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = govulncheck(&f, "scan-home-1");
    assert!(out.contains("GO-2026-0001"), "{code:?}: {out}");
    assert_eq!(code, Some(3), "govulncheck reports a vulnerability: {out}");
    let asked = f.db.as_ref().unwrap().paths();
    assert!(
        asked.iter().any(|p| p == "/index.json"),
        "the database was read through the gateway: {asked:?}"
    );
    // The database goes away; its files are served from the cache.
    f.gw.reload_with(|c| c.cache.mutable_ttl = Duration::from_secs(1));
    drop(f.db.take());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // A new home: govulncheck's own cache of the database is not there to help.
    let (code, out) = govulncheck(&f, "scan-home-2");
    assert!(out.contains("GO-2026-0001"), "offline: {code:?}: {out}");
    assert_eq!(code, Some(3), "offline: {out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_and_policy_check_decide_offline_from_the_cache() {
    let ca = TestCa::new();
    let f = fixture(&ca).await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("app");
    app(&dir);
    // Fill the cache through the gateway: the listed versions' .info, the vulnerability index.
    let (ok, out) = go(
        "1.23",
        &f,
        "alice",
        &["list", "-m", "-versions", "example.com/lib"],
        &dir,
        &[],
    );
    assert!(ok, "{out}");
    let (ok, out) = go(
        "1.23",
        &f,
        "alice",
        &["get", "example.com/vuln@latest"],
        &dir,
        &[],
    );
    assert!(ok, "{out}");
    let modgate = |args: &[&str]| {
        let out = modgate_command()
            .args(args)
            .arg("--config")
            .arg(&f.gw.config_path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = modgate(&["explain", "example.com/lib@v1.2.0"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("firewall:    refused by rule cooldown-7d for group everyone"),
        "{out}"
    );
    assert!(out.contains("answer:      403 modgate: example.com/lib@v1.2.0 refused by rule cooldown-7d: published"), "{out}");
    let (_, out) = modgate(&["explain", "example.com/lib@v1.3.0-rc.1", "--as", "ci-bot"]);
    assert!(
        out.contains("refused by rule ci-releases-only for group ci"),
        "{out}"
    );
    let (_, out) = modgate(&["explain", "example.com/lib@v1.3.0-rc.1", "--as", "alice"]);
    assert!(
        out.contains("firewall:    allowed by the default for group everyone"),
        "{out}"
    );

    let sum = work.path().join("go.sum");
    let line = |m: &str, v: &str| {
        format!(
            "{m} {v} h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n{m} {v}/go.mod h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
        )
    };
    std::fs::write(
        &sum,
        line("example.com/lib", "v1.1.0") + &line("example.com/vuln", "v1.0.1"),
    )
    .unwrap();
    let (code, out) = modgate(&["policy", "check", sum.to_str().unwrap()]);
    assert_eq!(code, Some(0), "all allowed: {out}");
    assert!(
        out.contains("2 module versions checked for group everyone: 0 refused, 0 unknown"),
        "{out}"
    );
    std::fs::write(
        &sum,
        line("example.com/lib", "v1.2.0")
            + &line("example.com/vuln", "v1.0.0")
            + &line("code.test/bad", "v1.0.0"),
    )
    .unwrap();
    let (code, out) = modgate(&["policy", "check", sum.to_str().unwrap()]);
    assert_eq!(code, Some(1), "refused: {out}");
    for (module, rule, why) in [
        ("example.com/lib@v1.2.0", "cooldown-7d", "published "),
        (
            "example.com/vuln@v1.0.0",
            "no-known-vulns",
            "affected by GO-2026-0001, fixed in v1.0.1",
        ),
        ("code.test/bad@v1.0.0", "no-bad", "module is denied"),
    ] {
        let row: Vec<&str> = out
            .lines()
            .find(|l| l.starts_with(module))
            .unwrap_or_else(|| panic!("no row for {module} in\n{out}"))
            .split_whitespace()
            .collect();
        assert_eq!(&row[..3], &[module, "refused", rule], "{out}");
        assert!(row[3..].join(" ").starts_with(why), "{out}");
    }
    // A version whose .info was never fetched cannot be shown old enough: unknown, exit 3.
    std::fs::write(&sum, line("example.com/watched", "v1.0.0")).unwrap();
    let (code, out) = modgate(&["policy", "check", sum.to_str().unwrap()]);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("unknown"), "{out}");
    let (code, out) = modgate(&["policy", "check", "/nonexistent/go.sum"]);
    assert_eq!(code, Some(2), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allow_list_by_reload_refuses_everything_it_does_not_name() {
    let ca = TestCa::new();
    let f = fixture(&ca).await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("app");
    app(&dir);
    f.gw.reload_with(|c| {
        c.firewall.default = FirewallAction::Deny;
        c.firewall.rules = vec![FirewallRule {
            action: FirewallAction::Allow,
            modules: PatternList(vec!["example.com/lib".into()]),
            versions: vec!["<v1.1.0".into()],
            ..rule("approved")
        }];
    });
    let (ok, out) = go(
        "1.23",
        &f,
        "alice",
        &["list", "-m", "-versions", "example.com/lib"],
        &dir,
        &[],
    );
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "example.com/lib v1.0.0");
    let (ok, out) = go(
        "1.23",
        &f,
        "alice",
        &["get", "example.com/lib@latest"],
        &dir,
        &[],
    );
    assert!(ok, "{out}");
    assert!(
        std::fs::read_to_string(dir.join("go.mod"))
            .unwrap()
            .contains("example.com/lib v1.0.0")
    );
    let (ok, out) = go(
        "1.23",
        &f,
        "alice",
        &["mod", "download", "example.com/watched@v1.0.0"],
        &dir,
        &[],
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("modgate: example.com/watched@v1.0.0 refused by the firewall's default (firewall.default = \"deny\"): no rule allows it; no version of this module is allowed"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_and_the_goproxy_endpoint_meet_the_same_rules() {
    let ca = TestCa::new();
    let f = fixture_with(&ca, |c| {
        c.endpoint.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let gw = &f.gw;
    let port = gw.gw().endpoint_addr().unwrap().port();
    let work = tempfile::tempdir().unwrap();
    let ways: [(&str, Vec<(&str, String)>); 2] = [
        (
            "plain HTTP through HTTP_PROXY",
            vec![
                ("GOPROXY", "http://proxy.golang.org".to_string()),
                (
                    "HTTP_PROXY",
                    format!("http://alice:{PASSWORD}@{}", gw.proxy),
                ),
                ("GOINSECURE", "proxy.golang.org".to_string()),
            ],
        ),
        (
            "the GOPROXY endpoint",
            vec![(
                "GOPROXY",
                format!("https://alice:{PASSWORD}@localhost:{port}"),
            )],
        ),
    ];
    for v in GO_VERSIONS {
        for (way, env) in &ways {
            let dir = work.path().join(format!("{v}-{}", way.len()));
            app(&dir);
            let home = dir.join(".home");
            std::fs::create_dir_all(&home).unwrap();
            let run = |args: &[&str]| {
                let mut cmd = go_command(v, &dir, &home);
                cmd.args(args)
                    .env("GOFLAGS", "-mod=mod -modcacherw")
                    .env("GOSUMDB", "off")
                    .env("SSL_CERT_FILE", &gw.ca_path)
                    .envs(env.iter().map(|(k, v)| (k, v)));
                let out = tokio::task::block_in_place(|| cmd.output().unwrap());
                (
                    out.status.success(),
                    String::from_utf8_lossy(&out.stdout).to_string()
                        + &String::from_utf8_lossy(&out.stderr),
                )
            };
            let (ok, out) = run(&["list", "-m", "-versions", "example.com/lib"]);
            assert!(ok, "go {v} {way}: {out}");
            assert_eq!(
                out.trim(),
                "example.com/lib v1.0.0 v1.1.0 v1.3.0-rc.1",
                "go {v} {way}"
            );
            let (ok, out) = run(&["get", "example.com/lib@v1.2.0"]);
            assert!(!ok, "go {v} {way}: {out}");
            assert!(
                out.contains(
                    "modgate: example.com/lib@v1.2.0 refused by rule cooldown-7d: published"
                ),
                "go {v} {way}: {out}"
            );
            let (ok, out) = run(&["mod", "download", "code.test/bad@v1.0.0"]);
            assert!(
                !ok && out.contains("refused by rule no-bad"),
                "go {v} {way}: {out}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retracted_versions_are_left_out_of_choices_but_still_served_to_builds_that_name_them() {
    let ca = TestCa::new();
    let f = fixture_with(&ca, |c| {
        c.firewall.rules = vec![FirewallRule {
            retracted: true,
            ..rule("no-retracted")
        }];
    })
    .await;
    let root = f._tree.path();
    module(
        root,
        "example.com/ret",
        "v1.0.0",
        40,
        "ret",
        "func V() int { return 0 }",
    );
    module(
        root,
        "example.com/ret",
        "v1.0.1",
        35,
        "ret",
        "func V() int { return 1 }",
    );
    write_module_at(
        root,
        "example.com/ret",
        "v1.1.0",
        "module example.com/ret\n\ngo 1.19\n\nretract v1.0.1 // broken\n",
        &[("m.go", "package ret\n\nfunc V() int { return 2 }\n")],
        &rfc3339(days_ago(30)),
    );
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("app");
    app(&dir);
    // Even -retracted (which lists what the go command itself would hide) does not show it.
    let (ok, out) = go(
        "1.23",
        &f,
        "alice",
        &["list", "-m", "-retracted", "-versions", "example.com/ret"],
        &dir,
        &[],
    );
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "example.com/ret v1.0.0 v1.1.0");
    // A build that already requires it still gets its files.
    let (ok, out) = go(
        "1.23",
        &f,
        "alice",
        &["mod", "download", "example.com/ret@v1.0.1"],
        &dir,
        &[],
    );
    assert!(ok, "{out}");
    let m = f.gw.metrics().await;
    assert!(
        metric(
            &m,
            "modgate_firewall_decisions_total",
            &[("rule", "no-retracted"), ("verdict", "refused")]
        ) >= 1.0
    );
}

/// The audit trail: the gateway as a process, its JSON log read back: one `modgate::audit`
/// line for the refused file and one for the report rule's finding, with rule, group, user and
/// verdict.
#[tokio::test(flavor = "multi_thread")]
async fn every_decision_leaves_one_audit_line() {
    let ca = TestCa::new();
    let tree = tempfile::tempdir().unwrap();
    write_tree(tree.path());
    let up = Upstream::tls(&ca, files_dir(tree.path().to_path_buf())).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    std::fs::write(
        dir.path().join("c.toml"),
        format!(
            r#"
[proxy]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[storage]
data_dir = "{d}/data"
[ca]
dir = "{d}/certs"
[log]
format = "json"
access_log = false
[sumdb]
verify = "off"
[vulndb]
url = ""
[egress]
allow_addresses = ["127.0.0.0/8"]
connect_ports = ["1-65535"]
[upstream]
extra_ca_file = "{ca}"
[upstream.overrides]
"proxy.golang.org" = "{base}"
[[firewall.rules]]
id = "no-bad"
modules = ["code.test/bad"]
[[firewall.rules]]
id = "watch"
mode = "report"
modules = ["example.com/watched"]
"#,
            ca = ca.path.display(),
            base = up.base_url(),
        ),
    )
    .unwrap();
    let log = dir.path().join("modgate.log");
    let mut child = modgate_command()
        .args(["serve", "--config", "c.toml"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let (_, proxy) = read_banner(&mut child);
    let curl = |path: &str| {
        let out = std::process::Command::new(tool("curl"))
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(dir.path().join("certs/ca.pem"))
            .args(["--proxy", &format!("http://{proxy}")])
            .arg(format!("https://proxy.golang.org{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(curl("/code.test/bad/@v/v1.0.0.info"), "403");
    assert_eq!(curl("/example.com/watched/@v/v1.0.0.info"), "200");
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let audit: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "modgate::audit")
        .collect();
    let fields = |module: &str| -> Vec<&serde_json::Value> {
        audit.iter().filter(|f| f["module"] == module).collect()
    };
    let bad = fields("code.test/bad");
    assert_eq!(bad.len(), 1, "one line for the refused file:\n{text}");
    assert_eq!(
        (
            &bad[0]["rule"],
            &bad[0]["verdict"],
            &bad[0]["group"],
            &bad[0]["version"],
            &bad[0]["op"]
        ),
        (
            &serde_json::json!("no-bad"),
            &serde_json::json!("refused"),
            &serde_json::json!("everyone"),
            &serde_json::json!("v1.0.0"),
            &serde_json::json!("info")
        ),
        "{text}"
    );
    let watched = fields("example.com/watched");
    assert_eq!(watched.len(), 1, "{text}");
    assert_eq!(watched[0]["verdict"], "allowed", "{text}");
    assert!(
        watched[0]["reported"]
            .as_str()
            .is_some_and(|r| r.starts_with("watch: module is denied")),
        "{text}"
    );
}
