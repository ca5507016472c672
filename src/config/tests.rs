use super::*;

#[test]
fn example_parses_to_the_defaults() {
    assert_eq!(parse(EXAMPLE).unwrap(), Config::default());
}

#[test]
fn empty_file_is_the_defaults() {
    assert_eq!(parse("").unwrap(), Config::default());
}

#[test]
fn example_names_every_key() {
    let value = toml::Value::try_from(Config::default()).unwrap();
    let mut keys = vec![];
    collect_keys("", &value, &mut keys);
    for key in keys {
        let leaf = key.rsplit('.').next().unwrap();
        assert!(
            EXAMPLE.contains(&format!("{leaf} =")) || EXAMPLE.contains(&format!("[{key}]")),
            "config example lacks {key}"
        );
    }
}

fn collect_keys(prefix: &str, value: &toml::Value, out: &mut Vec<String>) {
    if let toml::Value::Table(t) = value {
        for (k, v) in t {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            out.push(key.clone());
            // Tables whose keys are data (host names, DB names), not configuration keys.
            if key != "upstream.overrides" && key != "sumdb.dbs" && key != "private.routes" {
                collect_keys(&key, v, out);
            }
        }
    }
}

#[test]
fn private_accepts_a_string_or_a_list() {
    let one = parse("[modules]\nprivate = \"*.corp.example,github.com/acme\"\n").unwrap();
    assert_eq!(
        one.modules.private.entries(),
        vec!["*.corp.example,github.com/acme"]
    );
    let many = parse("[modules]\nprivate = [\"*.corp.example\", \"github.com/acme\"]\n").unwrap();
    assert_eq!(
        many.modules.private.entries(),
        vec!["*.corp.example", "github.com/acme"]
    );
}

#[test]
fn unknown_key_is_named() {
    let err = parse("[upstream]\nconect_timeout = \"1s\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("upstream"), "{err}");
    assert!(err.contains("conect_timeout"), "{err}");
}

#[test]
fn bad_duration_is_named() {
    let err = parse("[upstream]\nconnect_timeout = \"soon\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("upstream.connect_timeout:"), "{err}");
}

#[test]
fn environment_overrides_set_keys_and_errors_name_the_variable() {
    let vars = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let text = "[proxy]\nlisten = \"127.0.0.1:1\"\n[cache]\nmax_size = \"1GB\"\n";
    let c = parse_with_env(
        text,
        vars(&[
            ("MODGATE_PROXY__LISTEN", "127.0.0.1:3999"),
            ("MODGATE_SUMDB__FAIL_OPEN", "true"),
            ("modgate_ignored", "x"),
            ("MODGATE_CONFIG", "/elsewhere.toml"),
            (
                "MODGATE_MODULES__PRIVATE",
                "[\"corp.example\", \"*.internal\"]",
            ),
            ("MODGATE_LOG__LEVEL", "debug"),
            ("MODGATE_UPSTREAM__CONNECT_TIMEOUT", "7s"),
        ]),
    )
    .unwrap();
    assert_eq!(c.proxy.listen.to_string(), "127.0.0.1:3999");
    assert!(c.sumdb.fail_open);
    assert_eq!(c.modules.private.0, vec!["corp.example", "*.internal"]);
    assert_eq!(c.log.level, "debug");
    assert_eq!(
        c.upstream.connect_timeout,
        std::time::Duration::from_secs(7)
    );
    // Keys the environment does not set keep the file's values.
    assert_eq!(c.cache.max_size, bytesize::ByteSize::gb(1));
    // Without overrides the file alone decides.
    assert_eq!(
        parse_with_env(text, vars(&[])).unwrap(),
        parse(text).unwrap()
    );
    for (name, value, want) in [
        ("MODGATE_PROXY__LISTEN", ":3128", "MODGATE_PROXY__LISTEN"),
        (
            "MODGATE_PROXY__LISTN",
            "127.0.0.1:1",
            "MODGATE_PROXY__LISTN",
        ),
        (
            "MODGATE_SUMDB__FAIL_OPEN",
            "maybe",
            "MODGATE_SUMDB__FAIL_OPEN",
        ),
    ] {
        let err = parse_with_env(text, vars(&[(name, value)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{name}={value}: {err}");
    }
}

#[test]
fn the_endpoint_needs_users_or_loopback_or_an_explicit_anonymous_setting() {
    let with = |edit: &dyn Fn(&mut Config)| {
        let mut c = Config::default();
        edit(&mut c);
        c.validate().map_err(|e| e.to_string())
    };
    let err = with(&|c| c.endpoint.listen = Some("0.0.0.0:8443".parse().unwrap())).unwrap_err();
    assert!(
        err.contains("endpoint.listen") && err.contains("endpoint.allow_anonymous"),
        "{err}"
    );
    with(&|c| c.endpoint.listen = Some("127.0.0.1:8443".parse().unwrap())).unwrap();
    with(&|c| c.endpoint.listen = Some("[::1]:8443".parse().unwrap())).unwrap();
    with(&|c| {
        c.endpoint.listen = Some("0.0.0.0:8443".parse().unwrap());
        c.endpoint.allow_anonymous = true;
    })
    .unwrap();
    with(&|c| {
        c.endpoint.listen = Some("0.0.0.0:8443".parse().unwrap());
        c.auth.users = vec![UserConfig {
            name: "ci".into(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGhoaGhoaGhoaGhoaGhoaGhoaGhoaGhoaGhoaGhoaGg".into(),
        }];
    })
    .unwrap();
    for (edit, key) in [
        (
            Box::new(|c: &mut Config| c.endpoint.path_prefix = "go".into())
                as Box<dyn Fn(&mut Config)>,
            "endpoint.path_prefix",
        ),
        (
            Box::new(|c: &mut Config| c.endpoint.path_prefix = "/go/".into()),
            "endpoint.path_prefix",
        ),
        (
            Box::new(|c: &mut Config| c.endpoint.cert_file = Some("/nonexistent.pem".into())),
            "endpoint.cert_file",
        ),
        (
            Box::new(|c: &mut Config| c.endpoint.listen = Some(c.proxy.listen)),
            "endpoint.listen",
        ),
    ] {
        let err = with(&|c| {
            c.endpoint.listen = Some("127.0.0.1:8443".parse().unwrap());
            edit(c);
        })
        .unwrap_err();
        assert!(err.contains(key), "{key}: {err}");
    }
}
