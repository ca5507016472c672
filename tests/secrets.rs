//! Secrets stay secret: a full run of the binary at debug level, with proxy authentication
//! (right and wrong passwords), a private route whose password comes from the environment, proxy
//! mode and git forwarding; then the whole log is searched for every secret.

use std::process::{Command, Stdio};
use std::sync::Arc;

use base64::Engine;

use crate::private::{PASSWORD, USER, build_repos, internal_git_host};
use crate::util::*;

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_the_logs() {
    let ca = TestCa::new();
    let base = tempfile::tempdir().unwrap();
    let repos = build_repos(base.path());
    let git_host = Upstream::tls(&ca, internal_git_host(repos, Arc::default())).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy_password = "proxy-Pa55-word";
    let wrong_password = "wrong-Pa55-word";
    let hash = modgate::ingress::auth::hash_password(proxy_password);
    std::fs::write(
        dir.path().join("c.toml"),
        format!(
            r#"[proxy]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[log]
level = "debug"
format = "json"
[[auth.users]]
name = "ci"
password_hash = "{hash}"
[upstream]
extra_ca_file = "{ca}"
[upstream.overrides]
"git.internal" = "{git}"
[[private.routes]]
module = "git.corp.example/{{group}}/{{repo}}"
git = "https://git.internal/{{group}}/{{repo}}"
username = "{USER}"
password_env = "MODGATE_TEST_GIT_PASSWORD"
"#,
            ca = ca.path.display(),
            git = git_host.base_url(),
        ),
    )
    .unwrap();
    let log_path = dir.path().join("modgate.log");
    let mut child = modgate_command()
        .args(["serve", "--config", "c.toml"])
        .current_dir(dir.path())
        .env("MODGATE_TEST_GIT_PASSWORD", PASSWORD)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let (_, proxy) = read_banner(&mut child);
    let gw_ca = dir.path().join("certs/ca.pem");
    let curl = |user: &str, url: &str| {
        let out = Command::new(tool("curl"))
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--proxy"])
            .arg(format!("http://{user}@{proxy}"))
            .arg("--cacert")
            .arg(&gw_ca)
            .arg(url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    tokio::task::block_in_place(|| {
        assert_eq!(
            curl(
                &format!("ci:{wrong_password}"),
                "https://proxy.golang.org/x.com/m/@v/list"
            ),
            "000"
        );
        let ok = format!("ci:{proxy_password}");
        assert_eq!(
            curl(
                &ok,
                "https://proxy.golang.org/git.corp.example/team/alpha/@v/list"
            ),
            "200"
        );
        assert_eq!(
            curl(
                &ok,
                "https://proxy.golang.org/git.corp.example/team/alpha/@v/v1.0.0.zip"
            ),
            "200"
        );
        assert_eq!(
            curl(
                &ok,
                "https://git.corp.example/team/alpha/info/refs?service=git-upload-pack"
            ),
            "200"
        );
    });
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.lines().count() > 10,
        "debug logging produced a real log:\n{log}"
    );
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    let key_pem = std::fs::read_to_string(dir.path().join("certs/ca-key.pem")).unwrap();
    let mut secrets = vec![
        PASSWORD.to_string(),
        b64(format!("{USER}:{PASSWORD}")),
        proxy_password.to_string(),
        wrong_password.to_string(),
        b64(format!("ci:{proxy_password}")),
        b64(format!("ci:{wrong_password}")),
    ];
    secrets.extend(
        key_pem
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 20)
            .map(str::to_string),
    );
    for s in &secrets {
        assert!(!log.contains(s.as_str()), "secret {s:?} found in the log");
    }
}
