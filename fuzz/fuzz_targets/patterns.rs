//! GOPRIVATE pattern matching on arbitrary globs and targets: never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use modgate_core::policy::patterns::{Patterns, match_prefix_patterns, path_match};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let (globs, target) = s.split_once('\n').unwrap_or((s, "example.com/x"));
    let _ = match_prefix_patterns(globs, target);
    let _ = path_match(globs, target);
    if let Ok(p) = Patterns::parse([globs]) {
        if let Some(rule) = p.matching(target) {
            assert!(match_prefix_patterns(rule, target));
        }
    }
});
