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
