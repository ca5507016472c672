//! The public route: cache rules (immutable, TTL, stale-if-error, negative answers),
//! single-flight, atomic commits, zip validation, eviction, restart, GOPROXY fall-through, and
//! the never-leak guard, all against scripted TLS upstreams.

use std::sync::Arc;
use std::time::Duration;

use crate::util::*;

const HOST: &str = "proxy.golang.org:443";

async fn gateway(
    script: &Arc<Script>,
    ca: &TestCa,
    edit: impl FnOnce(&mut modgate::config::Config),
) -> (Upstream, TestGateway) {
    let up = Upstream::tls(ca, scripted(script.clone())).await;
    let base = up.base_url();
    let gw = TestGateway::start(ca, move |c| {
        c.upstream.overrides.insert("proxy.golang.org".into(), base);
        c.modules.private =
            modgate::config::PatternList(vec!["*.corp.example,github.com/acme/*".into()]);
        edit(c);
    })
    .await;
    (up, gw)
}

fn count(up: &Upstream, path: &str) -> usize {
    up.paths().iter().filter(|p| *p == path).count()
}

async fn get(gw: &TestGateway, path: &str) -> (u16, String, String) {
    let (status, headers, body) = gw.get(HOST, path, Alpn::H1).await;
    let cache = headers
        .get("x-modgate-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (
        status.as_u16(),
        cache,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn immutable_entries_are_served_from_cache_forever() {
    let ca = TestCa::new();
    let script = Arc::new(Script::default());
    script.ok("/example.com/m/@v/v1.0.0.mod", "module example.com/m\n");
    let (up, gw) = gateway(&script, &ca, |_| {}).await;
    assert_eq!(
        get(&gw, "/example.com/m/@v/v1.0.0.mod").await,
        (200, "miss".into(), "module example.com/m\n".into())
    );
    // Even if the upstream changes its mind, the cached bytes stay.
    script.ok("/example.com/m/@v/v1.0.0.mod", "module tampered\n");
    for _ in 0..3 {
        assert_eq!(
            get(&gw, "/example.com/m/@v/v1.0.0.mod").await,
            (200, "hit".into(), "module example.com/m\n".into())
        );
    }
    assert_eq!(count(&up, "/example.com/m/@v/v1.0.0.mod"), 1);
    // Module fetches multiplex on HTTP/2 when the upstream offers it.
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(
        seen[0].version,
        http::Version::HTTP_2,
        "h2 upstream when offered"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "modgate_request_duration_seconds_count",
            &[("route", "public"), ("cache", "hit")]
        ),
        3.0
    );
    assert!(metric(&m, "modgate_cache_entries", &[]) >= 1.0);
    assert!(metric(&m, "modgate_cache_bytes", &[]) >= 21.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn mutable_entries_expire_and_are_served_stale_when_upstream_fails() {
    let ca = TestCa::new();
    let script = Arc::new(Script::default());
    script.ok("/example.com/m/@v/list", "v1.0.0\n");
    let (up, gw) = gateway(&script, &ca, |c| {
        c.cache.mutable_ttl = Duration::from_millis(300)
    })
    .await;
    assert_eq!(
        get(&gw, "/example.com/m/@v/list").await,
        (200, "miss".into(), "v1.0.0\n".into())
    );
    assert_eq!(get(&gw, "/example.com/m/@v/list").await.1, "hit");
    tokio::time::sleep(Duration::from_millis(400)).await;
    script.ok("/example.com/m/@v/list", "v1.0.0\nv1.1.0\n");
    assert_eq!(
        get(&gw, "/example.com/m/@v/list").await,
        (200, "miss".into(), "v1.0.0\nv1.1.0\n".into())
    );
    assert_eq!(count(&up, "/example.com/m/@v/list"), 2);

    // Every upstream fails: the expired entry is served, marked stale.
    tokio::time::sleep(Duration::from_millis(400)).await;
    script.set(
        "/example.com/m/@v/list",
        Reply::Body(503, b"down".to_vec(), Duration::ZERO),
    );
    let (status, headers, body) = gw.get(HOST, "/example.com/m/@v/list", Alpn::H2).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-modgate-cache"], "stale");
    assert!(headers.contains_key("warning"));
    assert_eq!(&body[..], b"v1.0.0\nv1.1.0\n");
    // With nothing cached, the failure reaches the client as a 502 with the reason.
    script.set(
        "/example.com/other/@v/list",
        Reply::Body(503, b"down for maintenance".to_vec(), Duration::ZERO),
    );
    let (status, _, body) = get(&gw, "/example.com/other/@v/list").await;
    assert_eq!(status, 502);
    assert!(
        body.contains("answered 503") && body.contains("down for maintenance"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn info_for_a_major_the_path_lacks_is_a_query_the_upstream_answers() {
    // `go get m@v3.2.0` for a module without /v3 asks for v3.2.0.info, and proxy.golang.org
    // answers with the +incompatible version.
    let ca = TestCa::new();
    let script = Arc::new(Script::default());
    let info = r#"{"Version":"v3.2.0+incompatible","Time":"2018-03-08T23:13:08Z"}"#;
    script.ok("/example.com/m/@v/v3.2.0.info", info);
    let (up, gw) = gateway(&script, &ca, |_| {}).await;
    assert_eq!(
        get(&gw, "/example.com/m/@v/v3.2.0.info").await,
        (200, "miss".into(), info.into())
    );
    assert_eq!(count(&up, "/example.com/m/@v/v3.2.0.info"), 1);
    // .mod and .zip are only asked for with the suffix; without it they stay 404s.
    assert_eq!(get(&gw, "/example.com/m/@v/v3.2.0.mod").await.0, 404);
    assert_eq!(count(&up, "/example.com/m/@v/v3.2.0.mod"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_redirects_are_followed_as_the_go_command_follows_them() {
    // proxy.golang.org answers zips with a 302 to its storage host.
    let ca = TestCa::new();
    let script = Arc::new(Script::default());
    let storage_script = Arc::new(Script::default());
    let storage = Upstream::tls(&ca, scripted(storage_script.clone())).await;
    let storage_base = storage.base_url();
    script.set(
        "/example.com/m/@v/v1.0.0.mod",
        Reply::Redirect(302, "/blobs/m-1.0.0.mod".into()),
    );
    script.ok("/blobs/m-1.0.0.mod", "module example.com/m\n");
    script.set(
        "/example.com/m/@v/v1.1.0.mod",
        Reply::Redirect(307, "https://storage.test/x/m-1.1.0.mod?sig=1".into()),
    );
    storage_script.set(
        "/x/m-1.1.0.mod",
        Reply::Redirect(301, "m-1.1.0-final.mod".into()),
    );
    storage_script.ok("/x/m-1.1.0-final.mod", "module example.com/m // 1.1\n");
    script.set(
        "/example.com/loop/@v/list",
        Reply::Redirect(302, "/example.com/loop/@v/list".into()),
    );
    script.set(
        "/example.com/down/@v/list",
        Reply::Redirect(302, "http://storage.test/down".into()),
    );
    script.set(
        "/example.com/denied/@v/list",
        Reply::Redirect(302, "https://metadata.internal/secret".into()),
    );
    let (up, gw) = gateway(&script, &ca, |c| {
        c.upstream
            .overrides
            .insert("storage.test".into(), storage_base.clone());
        c.upstream
            .overrides
            .insert("metadata.internal".into(), storage_base);
        c.egress.deny = vec!["*.internal".into()];
    })
    .await;
    // Relative, then absolute to another host (through its override) and relative again.
    assert_eq!(
        get(&gw, "/example.com/m/@v/v1.0.0.mod").await,
        (200, "miss".into(), "module example.com/m\n".into())
    );
    assert_eq!(
        get(&gw, "/example.com/m/@v/v1.1.0.mod").await,
        (200, "miss".into(), "module example.com/m // 1.1\n".into())
    );
    assert_eq!(get(&gw, "/example.com/m/@v/v1.1.0.mod").await.1, "hit");
    assert_eq!(count(&up, "/example.com/m/@v/v1.1.0.mod"), 1);
    // A loop stops at the tenth request, as the go command's client does; https never goes on
    // to http, and egress.deny holds for redirect targets too.
    let (status, _, body) = get(&gw, "/example.com/loop/@v/list").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("stopped after 10 redirects"), "{body}");
    assert_eq!(count(&up, "/example.com/loop/@v/list"), 10);
    let (status, _, body) = get(&gw, "/example.com/denied/@v/list").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("denied by policy"), "{body}");
    assert_eq!(storage.paths().len(), 2, "the denied host was not asked");
    let (status, _, body) = get(&gw, "/example.com/down/@v/list").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("insecure"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn head_is_answered_without_a_body_on_h1_and_h2() {
    let ca = TestCa::new();
    let script = Arc::new(Script::default());
    script.ok("/example.com/m/@v/v1.0.0.mod", "module example.com/m\n");
    let (_up, gw) = gateway(&script, &ca, |_| {}).await;
    // A miss (a fill), a hit and a not-found, over both protocols.
    for alpn in [Alpn::H2, Alpn::H1] {
        for (path, want) in [
            ("/example.com/m/@v/v1.0.0.mod", 200),
            ("/example.com/m/@v/v1.0.0.mod", 200),
            ("/example.com/nope/@v/list", 404),
        ] {
            let (status, headers, body) = gw.request(HOST, http::Method::HEAD, path, alpn).await;
            assert_eq!((status.as_u16(), body.len()), (want, 0), "{path} {alpn:?}");
            if want == 200 {
                assert_eq!(headers["content-length"], "21", "{path} {alpn:?}");
            }
        }
    }
    assert_eq!(get(&gw, "/example.com/m/@v/v1.0.0.mod").await.1, "hit");
}

#[tokio::test(flavor = "multi_thread")]
async fn other_requests_for_private_paths_are_refused_not_forwarded() {
    // After git fails, the go command GETs the repository URL itself (codehost/git.go) to tell
    // "not found" apart; that and git's dumb protocol are no module protocol request.
    let ca = TestCa::new();
    let script = Arc::new(Script::default());
    let github = Upstream::tls(&ca, fixed("a public page")).await;
    let gh = github.base_url();
    let (_up, gw) = gateway(&script, &ca, |c| {
        // github.com/acme/* is served from an internal host; git.corp.example from itself.
        for (module, git) in [
            ("github.com/acme/{repo}", "https://git.internal/acme/{repo}"),
            (
                "git.corp.example/{group}/{repo}",
                "https://git.corp.example/{group}/{repo}",
            ),
        ] {
            c.private.routes.push(modgate::config::PrivateRouteConfig {
                module: module.into(),
                git: git.into(),
                username: String::new(),
                password_env: None,
                password_file: None,
                token_env: None,
                token_file: None,
                extra_ca_file: None,
            });
        }
        c.intercept.hosts.push("github.com".into());
        c.upstream.overrides.insert("github.com".into(), gh.clone());
        c.upstream.overrides.insert("git.corp.example".into(), gh);
    })
    .await;
    for path in [
        "/acme/secret-project",
        "/acme/secret-project/",
        "/acme/secret-project/info/refs",
        "/acme/secret-project/HEAD",
    ] {
        let (status, _, body) = gw.get("github.com:443", path, Alpn::H1).await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 404, "{path}: {body}");
        assert!(
            body.starts_with("not found: github.com/acme/secret-project")
                && body.contains("is private"),
            "{body}"
        );
    }
    let (status, _, body) = gw.get("github.com:443", "/other/project", Alpn::H1).await;
    assert_eq!((status.as_u16(), &body[..]), (200, &b"a public page"[..]));
    // A private host that is its own git host: the request leaks nothing and goes on.
    let (status, _, _) = gw
        .get("git.corp.example:443", "/team/alpha/-/issues", Alpn::H1)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        github.paths(),
        ["/other/project", "/team/alpha/-/issues"],
        "no private name went to github.com"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "modgate_private_refused_total", &[("kind", "other")]),
        4.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn not_found_is_passed_through_and_remembered_briefly() {
    let ca = TestCa::new();
    let script = Arc::new(Script::default());
    let (up, gw) = gateway(&script, &ca, |c| {
        c.cache.negative_ttl = Duration::from_millis(300)
    })
    .await;
    let (status, cache, body) = get(&gw, "/example.com/nope/@v/list").await;
    assert_eq!((status, cache.as_str()), (404, "miss"));
    assert_eq!(body, "not found: /example.com/nope/@v/list\n");
    assert_eq!(get(&gw, "/example.com/nope/@v/list").await.1, "hit");
    assert_eq!(count(&up, "/example.com/nope/@v/list"), 1);
    // Once the module appears upstream and the negative entry expires, it is found.
    script.ok("/example.com/nope/@v/list", "v0.1.0\n");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        get(&gw, "/example.com/nope/@v/list").await,
        (200, "miss".into(), "v0.1.0\n".into())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_misses_make_one_upstream_fetch() {
    let ca = TestCa::new();
    let script = Arc::new(Script::default());
    let zip = module_zip(
        "example.com/big",
        "v1.0.0",
        &[("a.go", &"package a\n".repeat(50_000))],
    );
    script.set(
        "/example.com/big/@v/v1.0.0.zip",
        Reply::Body(200, zip.clone(), Duration::from_millis(500)),
    );
    let (up, gw) = gateway(&script, &ca, |_| {}).await;
    let gw = Arc::new(gw);
    let mut tasks = vec![];
    for i in 0..50 {
        let gw = gw.clone();
        let alpn = if i % 2 == 0 { Alpn::H1 } else { Alpn::H2 };
        tasks.push(tokio::spawn(async move {
            gw.get(HOST, "/example.com/big/@v/v1.0.0.zip", alpn).await
        }));
    }
    let mut outcomes = std::collections::HashMap::<String, usize>::new();
    for t in tasks {
        let (status, headers, body) = t.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body.len(), zip.len());
        assert!(body[..] == zip[..], "identical bytes");
        *outcomes
            .entry(headers["x-modgate-cache"].to_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        count(&up, "/example.com/big/@v/v1.0.0.zip"),
        1,
        "{outcomes:?}"
    );
    assert_eq!(outcomes.get("miss"), Some(&1), "{outcomes:?}");
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "modgate_cache_fills_total", &[("outcome", "committed")]),
        1.0
    );
}

/// All of a streamed body, or why it broke off.
async fn read_all(mut body: hyper::body::Incoming) -> Result<Vec<u8>, String> {
    use http_body_util::BodyExt as _;
    let mut out = vec![];
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn followers_read_a_fill_while_it_is_written_and_get_its_end_only_if_it_passed() {
    use http_body_util::BodyExt as _;
    let ca = TestCa::new();
    let script = Arc::new(Script::default());
    let (up, gw) = gateway(&script, &ca, |_| {}).await;
    let gw = Arc::new(gw);
    let good = module_zip("example.com/big", "v1.0.0", &[("a.go", &noise(3_000_000))]);
    let bad = flip_file_data(&module_zip(
        "example.com/bad",
        "v1.0.0",
        &[("a.go", &noise(3_000_000))],
    ));
    for (module, zip, passes) in [
        ("example.com/big", good, true),
        ("example.com/bad", bad, false),
    ] {
        let path = format!("/{module}/@v/v1.0.0.zip");
        // The upstream sends all but the last 4 KiB, then holds its end until the test lets go.
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let split = zip.len() - 4096;
        script.set(
            &path,
            Reply::Gated {
                body: zip.clone(),
                split,
                gate: gate.clone(),
            },
        );
        let leader = {
            let (gw, path) = (gw.clone(), path.clone());
            tokio::spawn(async move { read_all(gw.open(HOST, &path).await.into_body()).await })
        };
        while count(&up, &path) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A second agent asks while the fill is held: it gets the bytes written so far.
        let early = async {
            let resp = gw.open(HOST, &path).await;
            assert_eq!(resp.status(), 200, "{path}");
            assert_eq!(resp.headers()["x-modgate-cache"], "coalesced");
            let mut body = resp.into_body();
            let mut got = vec![];
            while got.len() < 512 * 1024 {
                let frame = body.frame().await.expect("the stream goes on").unwrap();
                if let Ok(data) = frame.into_data() {
                    got.extend_from_slice(&data);
                }
            }
            (body, got)
        };
        // A guard against a hang, not a timing assertion: without reading while the file is
        // written the follower gets nothing until the upstream's end, which never comes.
        let (body, mut got) = tokio::time::timeout(Duration::from_secs(60), early)
            .await
            .expect("the follower receives bytes while the fill is in progress");
        assert!(
            got.len() <= split,
            "{path}: nothing the upstream has not sent"
        );
        assert!(
            got[..] == zip[..got.len()],
            "{path}: the bytes written so far"
        );
        gate.add_permits(1);
        let rest = read_all(body).await;
        let led = leader.await.unwrap();
        if passes {
            got.extend(rest.expect("the follower gets the end of a body that passed"));
            assert!(
                got == zip,
                "{path}: the follower's bytes are the upstream's"
            );
            assert!(led.unwrap() == zip, "{path}: so are the leader's");
        } else {
            assert!(
                rest.is_err(),
                "{path}: a refused body is never delivered whole"
            );
            assert!(
                led.is_err(),
                "{path}: not to the leader either: {:?}",
                led.as_ref().map(|b| (b.len(), zip.len()))
            );
        }
        assert_eq!(count(&up, &path), 1, "{path}: one upstream fetch");
    }
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "modgate_cache_fills_total", &[("outcome", "committed")]),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "modgate_cache_fills_total", &[("outcome", "rejected")]),
        1.0,
        "{m}"
    );
    let (_, cache, _) = get(&gw, "/example.com/big/@v/v1.0.0.zip").await;
    assert_eq!(cache, "hit");
}

#[tokio::test(flavor = "multi_thread")]
async fn aborted_or_invalid_bodies_are_never_committed() {
    let ca = TestCa::new();
    let script = Arc::new(Script::default());
    let good = module_zip("example.com/m", "v1.0.0", &[("m.go", "package m\n")]);
    script.set(
        "/example.com/m/@v/v1.0.0.zip",
        Reply::Abort {
            declared: good.len() as u64,
            sent: good[..good.len() / 2].to_vec(),
        },
    );
    // A well-formed zip whose entries are outside the module prefix.
    let evil = module_zip("example.com/evil", "v1.0.0", &[("m.go", "package m\n")]);
    script.ok("/example.com/bad/@v/v1.0.0.zip", evil);
    // Bytes that are not a zip at all.
    script.ok("/example.com/junk/@v/v1.0.0.zip", "not a zip");
    let (up, gw) = gateway(&script, &ca, |_| {}).await;
    let cache_dir = gw.dir.path().join("data/cache");

    // The client must never see a complete 200. These bodies end within the first write batch,
    // so they are checked before the answer: a 502 whose text the go command shows.
    for (path, reason) in [
        ("/example.com/m/@v/v1.0.0.zip", "upstream body failed"),
        ("/example.com/bad/@v/v1.0.0.zip", "invalid module zip"),
        ("/example.com/junk/@v/v1.0.0.zip", "invalid module zip"),
    ] {
        let (status, _, body) = gw.get(HOST, path, Alpn::H1).await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 502, "{path}: {text}");
        assert!(text.contains(reason), "{path}: {text}");
    }
    let mut files = vec![];
    walk(&cache_dir, &mut files);
    assert!(
        files.iter().all(|f| !f.ends_with(".zip")),
        "nothing committed: {files:?}"
    );
    // Only empty spare files (made ahead for the next fills) may remain in tmp.
    let leftovers: Vec<_> = std::fs::read_dir(gw.dir.path().join("data/tmp"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.metadata().unwrap().len() > 0)
        .map(|e| e.path())
        .collect();
    assert!(leftovers.is_empty(), "no rejected body left: {leftovers:?}");
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "modgate_cache_fills_total", &[("outcome", "rejected")]),
        2.0,
        "{m}"
    );

    // The upstream recovers: the next request fetches again and succeeds.
    script.ok("/example.com/m/@v/v1.0.0.zip", good.clone());
    let (status, _, body) = gw.get(HOST, "/example.com/m/@v/v1.0.0.zip", Alpn::H2).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], &good[..]);
    assert_eq!(count(&up, "/example.com/m/@v/v1.0.0.zip"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_tampered_or_wrong_answers_are_refused_before_they_are_cached() {
    let ca = TestCa::new();
    let good_zip = module_zip("example.com/z", "v1.0.0", &[("a.go", &noise(4096))]);
    let info = br#"{"Version":"v1.0.0","Time":"2024-01-02T03:04:05Z"}"#.to_vec();
    let bodies: std::collections::HashMap<String, Vec<u8>> = [
        // Cut part-way, then a clean close: the framing cannot tell, the content checks can.
        ("/example.com/t/@v/v1.0.0.info", info[..20].to_vec()),
        ("/example.com/t/@v/v1.0.0.mod", b"module exa".to_vec()),
        ("/example.com/t/@v/list", b"v1.0.0\nv1.1".to_vec()),
        // The same length and a valid structure, 16 bytes flipped in a file's data.
        ("/example.com/z/@v/v1.0.0.zip", flip_file_data(&good_zip)),
        // Complete, but for another version than the one asked for.
        (
            "/example.com/w/@v/v1.0.0.info",
            br#"{"Version":"v1.0.1","Time":"2024-01-02T03:04:05Z"}"#.to_vec(),
        ),
        // Complete and right, close-delimited all the same: accepted.
        ("/example.com/ok/@v/v1.0.0.info", info.clone()),
    ]
    .into_iter()
    .map(|(p, b)| (p.to_string(), b))
    .collect();
    let (base, _up) = close_delimited_upstream(&ca, bodies).await;
    let gw = TestGateway::start(&ca, move |c| {
        c.upstream.overrides.insert("proxy.golang.org".into(), base);
    })
    .await;
    for (path, reason) in [
        (
            "/example.com/t/@v/v1.0.0.info",
            ".info is not a JSON object",
        ),
        (
            "/example.com/t/@v/v1.0.0.mod",
            "go.mod declares module \"exa\"",
        ),
        ("/example.com/t/@v/list", "list line 2"),
        ("/example.com/z/@v/v1.0.0.zip", "file data is corrupt"),
        (
            "/example.com/w/@v/v1.0.0.info",
            "for version v1.0.1, not the v1.0.0",
        ),
    ] {
        // Twice: a refused answer is not cached, so the second is refused afresh (not a hit).
        for _ in 0..2 {
            let (status, cache, body) = get(&gw, path).await;
            assert_eq!((status, cache.as_str()), (502, ""), "{path}: {body}");
            assert!(body.contains(reason), "{path}: {body}");
        }
    }
    assert_eq!(
        get(&gw, "/example.com/ok/@v/v1.0.0.info").await,
        (200, "miss".into(), String::from_utf8(info.clone()).unwrap())
    );
    assert_eq!(get(&gw, "/example.com/ok/@v/v1.0.0.info").await.1, "hit");
    let m = gw.metrics().await;
    // Each bad answer was rejected at least once (a second request may have joined the first's
    // fill as it ended, and shared its refusal).
    assert!(
        metric(&m, "modgate_cache_fills_total", &[("outcome", "rejected")]) >= 5.0,
        "{m}"
    );
    assert_eq!(metric(&m, "modgate_cache_entries", &[]), 1.0, "{m}");
}

fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            walk(&e.path(), out);
        } else {
            out.push(e.path().display().to_string());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn least_recently_used_entries_are_evicted_first() {
    let ca = TestCa::new();
    let script = Arc::new(Script::default());
    let big = |c: char| {
        format!(
            "module example.com/{c}\n// {}\n",
            c.to_string().repeat(300_000)
        )
    };
    for c in ['a', 'b', 'c', 'd'] {
        script.ok(&format!("/example.com/{c}/@v/v1.0.0.mod"), big(c));
    }
    let (up, gw) = gateway(&script, &ca, |c| {
        c.cache.max_size = bytesize::ByteSize::mib(1)
    })
    .await;
    for c in ['a', 'b', 'c'] {
        assert_eq!(
            get(&gw, &format!("/example.com/{c}/@v/v1.0.0.mod")).await.1,
            "miss"
        );
    }
    assert_eq!(get(&gw, "/example.com/a/@v/v1.0.0.mod").await.1, "hit");
    // d pushes the cache over 1 MiB: b is the least recently used.
    assert_eq!(get(&gw, "/example.com/d/@v/v1.0.0.mod").await.1, "miss");
    assert_eq!(get(&gw, "/example.com/a/@v/v1.0.0.mod").await.1, "hit");
    assert_eq!(get(&gw, "/example.com/c/@v/v1.0.0.mod").await.1, "hit");
    let (status, cache, body) = get(&gw, "/example.com/b/@v/v1.0.0.mod").await;
    assert_eq!((status, cache.as_str()), (200, "miss"));
    assert_eq!(body, big('b'));
    assert_eq!(count(&up, "/example.com/b/@v/v1.0.0.mod"), 2);
    assert_eq!(count(&up, "/example.com/a/@v/v1.0.0.mod"), 1);
    let m = gw.metrics().await;
    assert!(metric(&m, "modgate_cache_evictions_total", &[]) >= 1.0);
    assert!(metric(&m, "modgate_cache_bytes", &[]) <= 1024.0 * 1024.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_survives_a_restart_with_upstreams_down() {
    let ca = TestCa::new();
    let script = Arc::new(Script::default());
    let zip = module_zip("example.com/m", "v1.0.0", &[("m.go", "package m\n")]);
    script.ok("/example.com/m/@v/v1.0.0.zip", zip.clone());
    script.ok(
        "/example.com/m/@v/v1.0.0.info",
        r#"{"Version":"v1.0.0","Time":"2024-01-02T03:04:05Z"}"#,
    );
    let (up, mut gw) = gateway(&script, &ca, |_| {}).await;
    assert_eq!(get(&gw, "/example.com/m/@v/v1.0.0.zip").await.1, "miss");
    assert_eq!(get(&gw, "/example.com/m/@v/v1.0.0.info").await.1, "miss");
    let data_dir = gw.dir.path().join("data");
    let ca_dir = gw.dir.path().join("certs");
    assert!(gw.gateway.take().unwrap().shutdown().await);
    drop(up);

    let gw2 = TestGateway::start(&ca, |c| {
        c.storage.data_dir = data_dir.clone();
        c.ca.dir = ca_dir.clone();
        c.upstream
            .overrides
            .insert("proxy.golang.org".into(), "https://127.0.0.1:9".into());
    })
    .await;
    let (status, headers, body) = gw2
        .get(HOST, "/example.com/m/@v/v1.0.0.zip", Alpn::H2)
        .await;
    assert_eq!(
        (
            status.as_u16(),
            headers["x-modgate-cache"].to_str().unwrap()
        ),
        (200, "hit")
    );
    assert_eq!(&body[..], &zip[..]);
    assert_eq!(get(&gw2, "/example.com/m/@v/v1.0.0.info").await.1, "hit");
    let m = gw2.metrics().await;
    assert_eq!(metric(&m, "modgate_cache_entries", &[]), 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn goproxy_list_falls_through_like_the_go_command() {
    let ca = TestCa::new();
    let first = Arc::new(Script::default());
    let second = Arc::new(Script::default());
    first.set(
        "/example.com/err/@v/list",
        Reply::Body(500, b"boom".to_vec(), Duration::ZERO),
    );
    second.ok("/example.com/nf/@v/list", "v1.0.0\n");
    second.ok("/example.com/err/@v/list", "v2.0.0\n");
    let a = Upstream::tls(&ca, scripted(first.clone())).await;
    let b = Upstream::tls(&ca, scripted(second.clone())).await;
    let (a_base, b_base) = (a.base_url(), b.base_url());
    let comma = TestGateway::start(&ca, |c| {
        c.modules.upstream = "https://first.test,https://second.test".into();
        c.upstream
            .overrides
            .insert("first.test".into(), a_base.clone());
        c.upstream
            .overrides
            .insert("second.test".into(), b_base.clone());
    })
    .await;
    // 404 on the first entry falls through on ",".
    assert_eq!(
        get(&comma, "/example.com/nf/@v/list").await,
        (200, "miss".into(), "v1.0.0\n".into())
    );
    // Any other error stops at ",".
    assert_eq!(get(&comma, "/example.com/err/@v/list").await.0, 502);
    assert_eq!(count(&b, "/example.com/err/@v/list"), 0);

    let pipe = TestGateway::start(&ca, |c| {
        c.modules.upstream = "https://first.test|https://second.test".into();
        c.upstream
            .overrides
            .insert("first.test".into(), a_base.clone());
        c.upstream
            .overrides
            .insert("second.test".into(), b_base.clone());
    })
    .await;
    // "|" falls through on any error.
    assert_eq!(
        get(&pipe, "/example.com/err/@v/list").await,
        (200, "miss".into(), "v2.0.0\n".into())
    );
    // Not found everywhere: the last answer, as the go command reports it (TryProxies).
    first.set(
        "/example.com/none/@v/list",
        Reply::Body(
            404,
            b"not found: first has no such module".to_vec(),
            Duration::ZERO,
        ),
    );
    second.set(
        "/example.com/none/@v/list",
        Reply::Body(
            410,
            b"not found: second has removed it".to_vec(),
            Duration::ZERO,
        ),
    );
    let (status, _, body) = get(&pipe, "/example.com/none/@v/list").await;
    assert_eq!(
        (status, body.as_str()),
        (410, "not found: second has removed it\n")
    );

    let off = TestGateway::start(&ca, |c| c.modules.upstream = "off".into()).await;
    let (status, _, body) = get(&off, "/example.com/nf/@v/list").await;
    assert_eq!(status, 404);
    assert!(body.contains("GOPROXY=off"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn private_and_invalid_paths_never_leave_the_gateway() {
    let ca = TestCa::new();
    let script = Arc::new(Script::default());
    let (up, gw) = gateway(&script, &ca, |_| {}).await;
    for path in [
        "/git.corp.example/team/lib/@v/list",
        "/git.corp.example/team/lib/@latest",
        "/git.corp.example/team/lib/@v/v1.0.0.info",
        "/git.corp.example/team/lib/@v/main.info",
        "/git.corp.example/team/lib/@v/v1.0.0.mod",
        "/git.corp.example/team/lib/@v/v1.0.0.zip",
        "/github.com/acme/tool/@v/list",
    ] {
        let (status, _, body) = get(&gw, path).await;
        assert_eq!(status, 404, "{path}");
        assert!(
            body.contains("is private") && body.contains("never fetched from a public proxy"),
            "{body}"
        );
    }
    for path in ["/sumdb/sum.golang.org/lookup/git.corp.example/team/lib@v1.0.0"] {
        let (status, _, body) = get(&gw, path).await;
        assert_eq!(status, 404);
        assert!(body.contains("GONOSUMDB"), "{body}");
    }
    let (status, _, body) = gw
        .get(
            "sum.golang.org:443",
            "/lookup/github.com/acme/tool@v1.0.0",
            Alpn::H1,
        )
        .await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("GONOSUMDB"));

    for (path, want) in [
        ("/example.com/../etc/@v/list", 400),
        ("/example.com/%2e%2e/x/@v/list", 400),
        ("/example.com%2Fx/@v/list", 400),
        ("/example.com/!X/@v/list", 400),
        ("/example.com/x%00/@v/list", 400),
        ("/example.com/aux/@v/list", 400),
        ("/example.com/x/@v/v1.0.zip", 400),
        ("/example.com/x/@v/..%2f..%2fetc.info", 400),
        ("/example.com/x/@v/v2.0.0.mod", 404),
        ("/robots.txt", 404),
    ] {
        let (status, headers, body) = gw.get(HOST, path, Alpn::H1).await;
        assert_eq!(
            status.as_u16(),
            want,
            "{path}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    }
    assert!(
        up.paths().is_empty(),
        "the public upstream saw: {:?}",
        up.paths()
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "modgate_private_refused_total", &[("kind", "goproxy")]),
        7.0
    );
    assert_eq!(
        metric(&m, "modgate_private_refused_total", &[("kind", "sumdb")]),
        2.0
    );
    let mut files = vec![];
    walk(&gw.dir.path().join("data/cache"), &mut files);
    assert!(files.is_empty(), "{files:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn checksum_database_is_proxied_and_cached_byte_for_byte() {
    let ca = TestCa::new();
    let script = Arc::new(Script::default());
    let lookup = "42\nexample.com/m v1.0.0 h1:abc=\nexample.com/m v1.0.0/go.mod h1:def=\n\ngo.sum database tree\n43\nroot=\n\n— sum.golang.org sig\n";
    script.ok("/lookup/example.com/m@v1.0.0", lookup);
    script.ok("/tile/8/0/000", vec![7u8; 256 * 32]);
    script.ok("/tile/8/0/001.p/5", vec![9u8; 5 * 32]);
    let sum = Upstream::tls(&ca, scripted(script.clone())).await;
    let base = sum.base_url();
    let gw = TestGateway::start(&ca, move |c| {
        c.upstream.overrides.insert("sum.golang.org".into(), base);
    })
    .await;
    // Through the proxy host, as the go command does after /supported.
    let (status, _, body) = get(&gw, "/sumdb/sum.golang.org/supported").await;
    assert_eq!((status, body.as_str()), (200, ""));
    assert_eq!(
        get(&gw, "/sumdb/sum.golang.org/lookup/example.com/m@v1.0.0").await,
        (200, "miss".into(), lookup.into())
    );
    // And directly on the database host: same cache entry.
    let (status, headers, body) = gw
        .get(
            "sum.golang.org:443",
            "/lookup/example.com/m@v1.0.0",
            Alpn::H2,
        )
        .await;
    assert_eq!(
        (
            status.as_u16(),
            headers["x-modgate-cache"].to_str().unwrap()
        ),
        (200, "hit")
    );
    assert_eq!(String::from_utf8_lossy(&body), lookup);
    let (_, headers, body) = gw
        .get("sum.golang.org:443", "/tile/8/0/000", Alpn::H1)
        .await;
    assert_eq!(body.len(), 256 * 32);
    assert_eq!(headers["content-type"], "application/octet-stream");
    let (_, _, body) = gw
        .get("sum.golang.org:443", "/tile/8/0/001.p/5", Alpn::H1)
        .await;
    assert_eq!(&body[..], &vec![9u8; 5 * 32][..]);
    assert_eq!(count(&sum, "/lookup/example.com/m@v1.0.0"), 1);
    // A partial tile is a prefix of the cached full tile: served without asking upstream.
    let (status, headers, body) = gw
        .get("sum.golang.org:443", "/tile/8/0/000.p/3", Alpn::H1)
        .await;
    assert_eq!(
        (
            status.as_u16(),
            headers["x-modgate-cache"].to_str().unwrap()
        ),
        (200, "hit")
    );
    assert_eq!(&body[..], &vec![7u8; 3 * 32][..]);
    assert_eq!(count(&sum, "/tile/8/0/000.p/3"), 0);
    // ... and so is a narrower version of a cached partial tile.
    let (_, _, body) = gw
        .get("sum.golang.org:443", "/tile/8/0/001.p/2", Alpn::H1)
        .await;
    assert_eq!(&body[..], &vec![9u8; 2 * 32][..]);
    assert_eq!(count(&sum, "/tile/8/0/001.p/2"), 0);
    // A database that is not configured is not proxied: 404 lets the go command go direct.
    assert_eq!(get(&gw, "/sumdb/sum.other.example/supported").await.0, 404);
    // A remembered not-found answer is nobody else's entry: not that of a version whose name
    // ends the way not-found entries are marked.
    let weird = "/lookup/example.com/m@v1.0.0-x.notfound";
    script.ok(weird, lookup);
    let (status, _, _) = gw
        .get(
            "sum.golang.org:443",
            "/lookup/example.com/m@v1.0.0-x",
            Alpn::H1,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _, _) = gw
        .get(
            "sum.golang.org:443",
            "/lookup/example.com/m@v1.0.0-x@notfound",
            Alpn::H1,
        )
        .await;
    assert_eq!(status, 400, "a not-found entry cannot be asked for by name");
    let (status, _, body) = gw.get("sum.golang.org:443", weird, Alpn::H1).await;
    assert_eq!(
        (status.as_u16(), String::from_utf8_lossy(&body)),
        (200, lookup.into())
    );
    assert_eq!(count(&sum, weird), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_body_limits_refuse_oversized_answers() {
    let ca = TestCa::new();
    let script = Arc::new(Script::default());
    script.ok("/example.com/m/@v/v1.0.0.mod", vec![b'x'; 100 * 1024]);
    script.ok("/example.com/m/@v/v1.0.1.mod", "module example.com/m\n");
    let (_up, gw) = gateway(&script, &ca, |c| {
        c.modules.max_file_size = bytesize::ByteSize::kib(64);
    })
    .await;
    let (status, _, body) = get(&gw, "/example.com/m/@v/v1.0.0.mod").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("exceeds the limit"), "{body}");
    assert_eq!(get(&gw, "/example.com/m/@v/v1.0.1.mod").await.0, 200);
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "modgate_limit_hits_total", &[("limit", "body_size")]),
        1.0
    );
}
