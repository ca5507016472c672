//! Path and version escaping: unescape never panics, and escape/unescape round-trip.
#![no_main]
use libfuzzer_sys::fuzz_target;
use modgate_core::gomod::path::{escape_path, escape_version, unescape_path, unescape_version};
use modgate_core::gomod::version;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(p) = unescape_path(s) {
        assert_eq!(escape_path(&p).unwrap(), s);
    }
    if let Ok(v) = unescape_version(s) {
        assert_eq!(escape_version(&v).unwrap(), s);
    }
    if let Ok(e) = escape_path(s) {
        assert_eq!(unescape_path(&e).unwrap(), s);
    }
    let _ = modgate_core::policy::classify::percent_decode(s);
    let c = version::canonical(s);
    if !c.is_empty() {
        assert!(version::is_valid(&c));
        assert_eq!(version::canonical(&c), c);
    }
    let _ = version::is_pseudo(s);
    let _ = modgate_core::gomod::sumdb::Tile::parse(s).map(|t| assert_eq!(t.path(), s));
});
