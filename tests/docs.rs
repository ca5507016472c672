//! The README stays true: it documents every metric the binary exports and every config key.

use modgate::config::Config;
use modgate::telemetry::metrics::Metrics;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

#[test]
fn readme_documents_every_metric() {
    let readme = readme();
    let metrics = Metrics::new();
    let names = metrics.names();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        assert!(
            readme.contains(&format!("`{name}`")),
            "README lacks metric {name}"
        );
    }
}

#[test]
fn readme_documents_every_config_key() {
    let readme = readme();
    let value = toml::Value::try_from(Config::default()).unwrap();
    let toml::Value::Table(sections) = value else {
        panic!()
    };
    let mut n = 0;
    for (section, keys) in sections {
        let toml::Value::Table(keys) = keys else {
            continue;
        };
        for key in keys.keys() {
            n += 1;
            let full = format!("`{section}.{key}`");
            assert!(readme.contains(&full), "README lacks config key {full}");
        }
    }
    // Keys whose default is absent (Option) do not serialize; check them by name.
    assert!(readme.contains("`upstream.extra_ca_file`"));
    assert!(n >= 20, "{n}");
}
