//! deploy/ stays valid: YAML and JSON parse, the dashboard and alert rules use only metrics the
//! binary exports, promtool accepts the rules and passes their unit tests, systemd-analyze
//! accepts the unit, the Kubernetes manifest passes the API schemas and the rules that make it
//! run, the container configurations pass `modgate config check` (deploy/validate.py does that
//! checking); and every dashboard query and rule runs in a real Prometheus against a gateway
//! that served traffic.

use std::process::Command;

#[test]
fn deploy_files_validate_against_the_real_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let names = dir.path().join("metrics.txt");
    std::fs::write(
        &names,
        modgate::telemetry::metrics::Metrics::new()
            .names()
            .join("\n"),
    )
    .unwrap();
    let python = std::path::Path::new("/usr/bin/python3");
    assert!(
        python.is_file(),
        "/usr/bin/python3 is required (Debian python3 with python3-yaml)"
    );
    let out = Command::new(python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/validate.py"))
        .arg(&names)
        .arg(env!("CARGO_BIN_EXE_modgate"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("checked "), "{text}");
}

/// A Prometheus server (Debian's) on loopback, killed on drop.
struct Prometheus {
    child: std::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `target` every second and evaluates deploy/prometheus/rules.yml every second.
    fn start(target: &str) -> Prometheus {
        let bin = std::path::Path::new("/usr/bin/prometheus");
        assert!(
            bin.is_file(),
            "/usr/bin/prometheus is required (Debian package prometheus)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: modgate\n    static_configs:\n      - targets: [\"{target}\"]\n",
                concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/rules.yml")
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .unwrap();
        let p = Prometheus {
            child,
            addr: format!("127.0.0.1:{port}"),
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while p.get("/-/ready").0 != 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "prometheus did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        p
    }

    fn get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(&self.addr) else {
            return (0, String::new());
        };
        let _ = write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        let status = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        // Chunked answers: take the JSON object out of the chunks.
        let body = match (body.find('{'), body.rfind('}')) {
            (Some(a), Some(b)) => body[a..=b].to_string(),
            _ => body.to_string(),
        };
        (status, body)
    }

    /// An instant query: its result vector.
    fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>, String> {
        let q = percent_encoding::utf8_percent_encode(expr, percent_encoding::NON_ALPHANUMERIC);
        let (_, body) = self.get(&format!("/api/v1/query?query={q}"));
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if v["status"] != "success" {
            return Err(body);
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_query_and_rule_runs_against_a_gateway_that_served_traffic() {
    use crate::util::*;
    let ca = TestCa::new();
    let (_tree, upstream) = one_module_upstream(&ca, "example.com/m", "v1.0.0").await;
    let base = upstream.base_url();
    let gw = TestGateway::start(&ca, |c| {
        c.upstream.overrides.insert("proxy.golang.org".into(), base);
        c.modules.private = modgate::config::PatternList(vec!["corp.example".into()]);
    })
    .await;
    let traffic = || async {
        for path in [
            "/example.com/m/@v/v1.0.0.info",
            "/example.com/m/@v/v1.0.0.mod",
            "/example.com/m/@v/v1.0.0.zip",
            "/example.com/m/@v/list",
            "/example.com/nope/@v/list",
            "/corp.example/x/@v/list",
        ] {
            gw.get("proxy.golang.org:443", path, Alpn::H1).await;
        }
    };
    let prom = tokio::task::block_in_place(|| Prometheus::start(&gw.admin.to_string()));
    // Traffic across several scrapes, so that rates over the window are above zero.
    for _ in 0..4 {
        traffic().await;
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    }
    tokio::task::block_in_place(|| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while prom
            .query("count_over_time(up{job=\"modgate\"}[1m]) >= 5")
            .map(|r| r.is_empty())
            .unwrap_or(true)
        {
            assert!(std::time::Instant::now() < deadline, "no scrapes");
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        let dashboard: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/deploy/grafana/dashboards/modgate.json"
            ))
            .unwrap(),
        )
        .unwrap();
        let mut empty = vec![];
        let mut ran = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "30s")
                    .replace("$job", "modgate")
                    .replace("$instance", ".*")
                    .replace("$route", ".*");
                let result = prom
                    .query(&expr)
                    .unwrap_or_else(|e| panic!("panel {:?}: {expr}: {e}", panel["title"]));
                ran += 1;
                if result.is_empty() {
                    empty.push(format!("{}: {expr}", panel["title"]));
                }
            }
        }
        assert!(ran >= 30, "{ran}");
        // The panels an operator asks "why is my build slow" with have data after traffic.
        for title in [
            "Wait for the first byte, by route (p50 / p95 / p99)",
            "Whole request p95, by cache outcome",
            "Cache hit ratio",
            "Requests per second, by route",
            "Refusals per second, by reason",
            "Process memory",
            "CA certificate expires in",
        ] {
            assert!(
                !empty.iter().any(|e| e.starts_with(&format!("\"{title}\""))),
                "{title} shows no data: {empty:#?}"
            );
        }
        // Every recording and alert rule evaluates without error.
        let (_, rules) = prom.get("/api/v1/rules");
        let rules: serde_json::Value = serde_json::from_str(&rules).unwrap();
        let mut count = 0;
        for group in rules["data"]["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                count += 1;
                assert_eq!(rule["health"], "ok", "{rule}");
            }
        }
        assert!(count >= 15, "{rules}");
        // No alert fires for this healthy traffic (a 404 and a refused private path are the
        // agents' business); the recording rules have data.
        let firing = prom.query("ALERTS{alertstate=\"firing\"}").unwrap();
        assert!(firing.is_empty(), "{firing:?}");
        assert!(!prom.query("modgate:cache_hit:ratio5m").unwrap().is_empty());
        assert!(
            !prom
                .query("modgate:response_start:p99_5m")
                .unwrap()
                .is_empty()
        );
    });
}
