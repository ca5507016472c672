use super::*;
use crate::policy::classify::{Classifier, ClassifyError};

fn rules(p: &[&str]) -> Rules {
    Rules {
        private: Patterns::parse(p.iter().copied()).unwrap(),
        routes: PrivateRoutes::default(),
        own_sumdb: None,
    }
}

fn classify(host: &str, path: &str, q: Option<&str>) -> Target {
    Classifier::new(&["proxy.golang.org".into()], &["sum.golang.org".into()])
        .classify(host, "GET", path, q)
        .unwrap()
}

#[test]
fn public_goproxy_routes_carry_key_and_upstream_path() {
    let t = classify(
        "proxy.golang.org",
        "/github.com/%21azure/x/@v/v1.0.0-!r!c1.zip",
        None,
    );
    let Route::Public(f) = route(&t, &rules(&[])) else {
        panic!()
    };
    assert_eq!(
        f.key().as_str(),
        "mod/github.com/!azure/x/@v/v1.0.0-!r!c1.zip"
    );
    assert_eq!(
        f.upstream_path(),
        "/github.com/%21azure/x/@v/v1.0.0-%21r%21c1.zip"
    );
    assert_eq!(f.class(), CacheClass::Immutable);
    assert_eq!(f.content(), Content::Zip);
    let t = classify("proxy.golang.org", "/x.com/m/@v/list", None);
    let Route::Public(f) = route(&t, &rules(&[])) else {
        panic!()
    };
    assert_eq!(f.class(), CacheClass::Mutable);
    let t = classify(
        "proxy.golang.org",
        "/x.com/m/@v/v2.0.0+incompatible.info",
        None,
    );
    let Route::Public(f) = route(&t, &rules(&[])) else {
        panic!()
    };
    assert_eq!(f.upstream_path(), "/x.com/m/@v/v2.0.0+incompatible.info");
    assert_eq!(f.class(), CacheClass::Immutable);
}

#[test]
fn sumdb_routes() {
    let t = classify("sum.golang.org", "/tile/8/0/x004/822", None);
    let Route::SumDb(f) = route(&t, &rules(&[])) else {
        panic!()
    };
    assert_eq!(f.key().as_str(), "sumdb/sum.golang.org/tile/8/0/x004/822");
    assert_eq!(f.class(), CacheClass::Immutable);
    assert_eq!(f.content(), Content::Binary);
    let t = classify("sum.golang.org", "/tile/8/0/x004/822.p/7", None);
    let Route::SumDb(f) = route(&t, &rules(&[])) else {
        panic!()
    };
    assert_eq!(f.class(), CacheClass::Mutable);
    let t = classify("sum.golang.org", "/latest", None);
    assert!(matches!(route(&t, &rules(&[])), Route::SumDb(f) if f.class() == CacheClass::Mutable));
    let t = classify("proxy.golang.org", "/sumdb/sum.golang.org/supported", None);
    assert_eq!(route(&t, &rules(&[])), Route::SumDbSupported);
}

/// Never-leak: every request shape that names a private path is refused locally.
#[test]
fn private_paths_never_reach_a_public_route() {
    let r = rules(&["*.corp.example", "github.com/acme/*"]);
    let private_modules = [
        "git.corp.example/team/lib",
        "github.com/acme/tool/v2",
        "a.b.corp.example/x",
    ];
    for m in private_modules {
        let esc = crate::gomod::path::escape_path(m).unwrap();
        let requests = [
            (
                "proxy.golang.org",
                format!("/{esc}/@v/list"),
                None,
                "goproxy",
            ),
            (
                "proxy.golang.org",
                format!("/{esc}/@latest"),
                None,
                "goproxy",
            ),
            (
                "proxy.golang.org",
                format!("/{esc}/@v/main.info"),
                None,
                "goproxy",
            ),
            (
                "proxy.golang.org",
                format!("/{esc}/@v/v2.0.0.mod"),
                None,
                "goproxy",
            ),
            (
                "proxy.golang.org",
                format!("/{esc}/@v/v2.0.0.zip"),
                None,
                "goproxy",
            ),
            (
                "proxy.golang.org",
                format!("/sumdb/sum.golang.org/lookup/{esc}@v2.0.0"),
                None,
                "sumdb",
            ),
            (
                "sum.golang.org",
                format!("/lookup/{esc}@v2.0.0"),
                None,
                "sumdb",
            ),
        ];
        for (host, path, q, kind) in requests {
            let Ok(t) = Classifier::new(&["proxy.golang.org".into()], &["sum.golang.org".into()])
                .classify(host, "GET", &path, q)
            else {
                continue; // invalid for this module's major version: answered 404 locally
            };
            match route(&t, &r) {
                Route::PrivateRefused {
                    kind: k, message, ..
                } => {
                    assert_eq!(k, kind, "{host}{path}");
                    assert!(message.starts_with("not found: "), "{message}");
                }
                other => panic!("{host}{path} leaked to {other:?}"),
            }
        }
        let host = m.split('/').next().unwrap();
        let rest = &m[host.len()..];
        let t = classify(host, rest, Some("go-get=1"));
        assert!(
            matches!(route(&t, &r), Route::PrivateRefused { kind: "goget", .. }),
            "{m}"
        );
        let t = classify(
            host,
            &format!("{rest}.git/info/refs"),
            Some("service=git-upload-pack"),
        );
        assert!(
            matches!(route(&t, &r), Route::PrivateRefused { kind: "git", .. }),
            "{m}"
        );
    }
    // The sumdb refusal tells the user what to do.
    let t = classify("sum.golang.org", "/lookup/git.corp.example/x@v1.0.0", None);
    let Route::PrivateRefused { message, .. } = route(&t, &r) else {
        panic!()
    };
    assert!(message.contains("GONOSUMDB"));
    // Public neighbours still go out.
    let t = classify("proxy.golang.org", "/github.com/acmeco/tool/@v/list", None);
    assert!(matches!(route(&t, &r), Route::Public(_)));
}

#[test]
fn private_routes_serve_what_they_cover() {
    use crate::policy::private::RouteTemplate;
    let r = Rules {
        private: Patterns::parse(["git.corp.example"]).unwrap(),
        routes: PrivateRoutes::new(vec![
            RouteTemplate::parse(
                "git.corp.example/{g}/{r}",
                "https://git.internal/{g}/{r}.git",
            )
            .unwrap(),
        ]),
        own_sumdb: None,
    };
    let t = classify(
        "proxy.golang.org",
        "/git.corp.example/team/lib/sub/@v/v1.0.0.zip",
        None,
    );
    let Route::Private(f) = route(&t, &r) else {
        panic!()
    };
    assert_eq!(f.repo().root, "git.corp.example/team/lib");
    assert_eq!(
        f.key().as_str(),
        "mod/git.corp.example/team/lib/sub/@v/v1.0.0.zip"
    );
    let t = classify("git.corp.example", "/team/lib/sub", Some("go-get=1"));
    assert_eq!(
        route(&t, &r),
        Route::GoGetAnswer {
            root: "git.corp.example/team/lib".into()
        }
    );
    let t = classify(
        "git.corp.example",
        "/team/lib.git/info/refs",
        Some("service=git-upload-pack"),
    );
    let Route::GitForward {
        request_prefix,
        repo,
    } = route(&t, &r)
    else {
        panic!()
    };
    assert_eq!(
        (request_prefix.as_str(), repo.git_url.as_str()),
        ("/team/lib.git", "https://git.internal/team/lib.git")
    );
    // Pushes, sub-paths and paths no route covers are refused locally.
    let t = classify("git.corp.example", "/team/lib/git-receive-pack", None);
    assert!(matches!(route(&t, &r), Route::PrivateRefused { .. }));
    let t = classify(
        "git.corp.example",
        "/team/lib/sub/info/refs",
        Some("service=git-upload-pack"),
    );
    assert!(matches!(route(&t, &r), Route::PrivateRefused { .. }));
    let t = classify("proxy.golang.org", "/git.corp.example/solo/@v/list", None);
    assert!(matches!(route(&t, &r), Route::PrivateRefused { .. }));
}

#[test]
fn go_path_escape_matches_go() {
    assert_eq!(
        go_path_escape("/github.com/!azure/x@v1.0.0"),
        "/github.com/%21azure/x@v1.0.0"
    );
    assert_eq!(go_path_escape("/a b/#?%"), "/a%20b/%23%3F%25");
    assert_eq!(
        go_path_escape("/x/@v/v2.0.0+incompatible.zip"),
        "/x/@v/v2.0.0+incompatible.zip"
    );
}

#[test]
fn vulnerability_database_files_are_cached_and_private_modules_stay_local() {
    let c = Classifier::new(&[], &[]).with_vulndb("vuln.go.dev", "");
    let get = |path: &str| c.classify("vuln.go.dev", "GET", path, None);
    let r = rules(&["*.corp.example"]);
    for (path, key) in [
        (
            "/index/modules.json",
            "vulndb/vuln.go.dev/index/modules.json",
        ),
        (
            "/ID/GO-2024-1234.json",
            "vulndb/vuln.go.dev/ID/GO-2024-1234.json",
        ),
        (
            "/golang.org/x/text.json",
            "vulndb/vuln.go.dev/golang.org/x/text.json",
        ),
        (
            "/github.com/!azure/x.json",
            "vulndb/vuln.go.dev/github.com/!azure/x.json",
        ),
    ] {
        let Route::VulnDb(f) = route(&get(path).unwrap(), &r) else {
            panic!("{path}")
        };
        assert_eq!((f.key().as_str(), f.upstream_path()), (key, path));
    }
    // The legacy per-module file of a private module is never asked of the public database.
    let Route::PrivateRefused { kind, message, .. } =
        route(&get("/git.corp.example/team/lib.json").unwrap(), &r)
    else {
        panic!()
    };
    assert_eq!(kind, "vulndb");
    assert!(
        message.contains("git.corp.example/team/lib is private"),
        "{message}"
    );
    // Not a database file, or not a read: refused before anything is asked.
    assert!(matches!(
        get("/index/db.json.gz"),
        Err(ClassifyError::NotFound(_))
    ));
    assert!(get("/../x.json").is_err());
    assert!(matches!(
        c.classify("vuln.go.dev", "POST", "/index/db.json", None),
        Err(ClassifyError::Method(_))
    ));
    // Under a mirror's path prefix.
    let m = Classifier::new(&[], &[]).with_vulndb("mirror.corp", "/vulndb/");
    assert!(matches!(
        m.classify("mirror.corp", "GET", "/vulndb/ID/GO-2024-1234.json", None),
        Ok(Target::VulnDb { .. })
    ));
    assert_eq!(
        m.classify("mirror.corp", "GET", "/other/x.json", None),
        Ok(Target::Other)
    );
}
