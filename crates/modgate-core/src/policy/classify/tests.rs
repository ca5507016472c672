use super::*;

fn c() -> Classifier {
    Classifier::new(
        &["proxy.golang.org".into(), "goproxy.io".into()],
        &["sum.golang.org".into()],
    )
}

fn proxy(path: &str) -> Result<Target, ClassifyError> {
    c().classify("proxy.golang.org", "GET", path, None)
}

fn gp(module: &str, op: ProxyOp) -> Target {
    Target::GoProxy {
        module: ModulePath::new(module).unwrap(),
        op,
    }
}

#[test]
fn goproxy_calls() {
    let table = [
        (
            "/golang.org/x/mod/@v/list",
            gp("golang.org/x/mod", ProxyOp::List),
        ),
        (
            "/golang.org/x/mod/@latest",
            gp("golang.org/x/mod", ProxyOp::Latest),
        ),
        (
            "/github.com/%21azure/go-autorest/@v/v1.2.3.info",
            gp(
                "github.com/Azure/go-autorest",
                ProxyOp::Info("v1.2.3".into()),
            ),
        ),
        (
            "/github.com/!azure/go-autorest/@v/v1.2.3.mod",
            gp(
                "github.com/Azure/go-autorest",
                ProxyOp::Mod("v1.2.3".into()),
            ),
        ),
        (
            "/example.com/m/@v/v2.0.0+incompatible.zip",
            gp("example.com/m", ProxyOp::Zip("v2.0.0+incompatible".into())),
        ),
        (
            "/example.com/m/v2/@v/v2.1.0-!r!c1.zip",
            gp("example.com/m/v2", ProxyOp::Zip("v2.1.0-RC1".into())),
        ),
        (
            "/example.com/m/@v/master.info",
            gp("example.com/m", ProxyOp::Query("master".into())),
        ),
        (
            "/example.com/m/@v/v1.2.info",
            gp("example.com/m", ProxyOp::Query("v1.2".into())),
        ),
        (
            "/example.com/m/@v/!feature.info",
            gp("example.com/m", ProxyOp::Query("Feature".into())),
        ),
        (
            "/example.com/m/@v/v0.0.0-20200101000000-abcdefabcdef.info",
            gp(
                "example.com/m",
                ProxyOp::Info("v0.0.0-20200101000000-abcdefabcdef".into()),
            ),
        ),
        // Majors that do not fit the path: queries the upstream or the repository
        // answers (`go get m@v3.2.0` gets `v3.2.0+incompatible`), not 404s.
        (
            "/example.com/m/@v/v3.2.0.info",
            gp("example.com/m", ProxyOp::Query("v3.2.0".into())),
        ),
        (
            "/example.com/m/@v/v2.0.0-20200101000000-abcdefabcdef.info",
            gp(
                "example.com/m",
                ProxyOp::Query("v2.0.0-20200101000000-abcdefabcdef".into()),
            ),
        ),
        (
            "/example.com/m/v2/@v/v1.0.0.info",
            gp("example.com/m/v2", ProxyOp::Query("v1.0.0".into())),
        ),
    ];
    for (path, want) in table {
        assert_eq!(proxy(path).unwrap(), want, "{path}");
    }
}

#[test]
fn hostile_and_invalid_paths() {
    let bad = [
        "/example.com/../m/@v/list",
        "/example.com/%2e%2e/m/@v/list",
        "/example.com%2Fm/@v/list",
        "/example.com%5cm/@v/list",
        "/Example.com/m/@v/list",
        "/example.com/M/@v/list",
        "/example.com/!m!/@v/list",
        "/example.com/!M/@v/list",
        "/example.com/m%00/@v/list",
        "/example.com/m\u{1}/@v/list",
        "/example.com/m%ZZ/@v/list",
        "/example.com/m%/@v/list",
        "/example.com/com1/@v/list",
        "/example.com/m/@v/v1.2.zip",
        "/example.com/m/@v/master.mod",
        "/example.com/m/@v/v1.0.0!.info",
        "/example.com/m/@v/V1.0.0.mod",
        "/example.com/m/@v/../../etc/passwd.info",
        "/example.com/m/@v/a%2Fb.info",
        "/localhost/m/@v/list",
        "/example.com/m/v1/@v/list",
        "/%ff/@v/list",
    ];
    for path in bad {
        let r = proxy(path);
        assert!(
            matches!(r, Err(ClassifyError::BadRequest(_))),
            "{path}: {r:?}"
        );
    }
    let long = format!("/example.com/{}/@v/list", "a".repeat(100));
    assert!(proxy(&long).is_ok());
    // Well-formed but impossible: 404 so GOPROXY lists fall through.
    for path in [
        "/example.com/m/@v/v2.0.0.mod",
        "/example.com/m/v2/@v/v1.0.0.zip",
        "/",
        "/favicon.ico",
        "/example.com/m/@v/foo",
    ] {
        let r = proxy(path);
        assert!(
            matches!(r, Err(ClassifyError::NotFound(_))),
            "{path}: {r:?}"
        );
    }
    assert!(matches!(
        c().classify("proxy.golang.org", "POST", "/example.com/m/@v/list", None),
        Err(ClassifyError::Method(_))
    ));
}

#[test]
fn sumdb_calls() {
    let cl = c();
    let lookup = cl
        .classify(
            "sum.golang.org",
            "GET",
            "/lookup/github.com/!azure/x@v1.0.0",
            None,
        )
        .unwrap();
    assert_eq!(
        lookup,
        Target::SumDb {
            db: "sum.golang.org".into(),
            op: SumDbOp::Lookup {
                module: ModulePath::new("github.com/Azure/x").unwrap(),
                version: "v1.0.0".into()
            }
        }
    );
    let t = cl
        .classify(
            "proxy.golang.org",
            "GET",
            "/sumdb/sum.golang.org/tile/8/0/x004/822.p/3",
            None,
        )
        .unwrap();
    assert!(matches!(t, Target::SumDb { op: SumDbOp::Tile(t), .. } if !t.is_full()));
    assert_eq!(
        cl.classify(
            "proxy.golang.org",
            "GET",
            "/sumdb/sum.golang.org/supported",
            None
        )
        .unwrap(),
        Target::SumDb {
            db: "sum.golang.org".into(),
            op: SumDbOp::Supported
        }
    );
    assert_eq!(
        cl.classify("sum.golang.org", "GET", "/latest", None)
            .unwrap(),
        Target::SumDb {
            db: "sum.golang.org".into(),
            op: SumDbOp::Latest
        }
    );
    // `supported` exists only under a proxy.
    assert!(matches!(
        cl.classify("sum.golang.org", "GET", "/supported", None),
        Err(ClassifyError::NotFound(_))
    ));
    assert!(matches!(
        cl.classify(
            "proxy.golang.org",
            "GET",
            "/sumdb/sum.other.org/supported",
            None
        ),
        Err(ClassifyError::NotFound(_))
    ));
    for bad in [
        "/lookup/x.com/m",
        "/lookup/x.com/m@master",
        "/lookup/X.com/m@v1.0.0",
        "/tile/8/0/4822",
    ] {
        assert!(
            matches!(
                cl.classify("sum.golang.org", "GET", bad, None),
                Err(ClassifyError::BadRequest(_))
            ),
            "{bad}"
        );
    }
}

#[test]
fn go_get_and_git() {
    let cl = c();
    assert_eq!(
        cl.classify("git.corp.example", "GET", "/team/lib/pkg", Some("go-get=1"))
            .unwrap(),
        Target::GoGet {
            path: "git.corp.example/team/lib/pkg".into()
        }
    );
    assert_eq!(
        cl.classify(
            "git.corp.example",
            "GET",
            "/team/lib.git/info/refs",
            Some("service=git-upload-pack")
        )
        .unwrap(),
        Target::Git {
            repo: "git.corp.example/team/lib.git".into(),
            service: "git-upload-pack"
        }
    );
    assert_eq!(
        cl.classify(
            "git.corp.example",
            "POST",
            "/team/lib/git-upload-pack",
            None
        )
        .unwrap(),
        Target::Git {
            repo: "git.corp.example/team/lib".into(),
            service: "git-upload-pack"
        }
    );
    assert_eq!(
        cl.classify("git.corp.example", "GET", "/team/lib/info/refs", None)
            .unwrap(),
        Target::Other
    );
    assert_eq!(
        cl.classify("git.corp.example", "GET", "/", None).unwrap(),
        Target::Other
    );
    assert!(
        cl.classify("git.corp.example", "GET", "/a b", Some("go-get=1"))
            .is_err()
    );
}
