//! The module-zip validator on arbitrary bytes: never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use modgate_core::gomod::path::ModulePath;

fuzz_target!(|data: &[u8]| {
    let m = ModulePath::new("example.com/m").unwrap();
    let _ = modgate_core::gomod::zip::check_zip(&m, "v1.0.0", std::io::Cursor::new(data), data.len() as u64);
    let _ = modgate_core::gomod::dirhash::hash_zip(std::io::Cursor::new(data));
});
