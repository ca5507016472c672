//! Configuration parsing and validation on arbitrary text: never panics; errors name a key.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Err(e) = modgate::config::parse(s) {
        assert!(!e.to_string().is_empty());
    }
});
