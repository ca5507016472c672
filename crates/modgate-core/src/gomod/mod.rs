//! Pure Go formats, ported from golang.org/x/mod: module paths and escaping (`path`), versions
//! (`version`) and module zips (`zip`). No I/O beyond reading a zip the caller opened.

pub mod coderepo;
pub mod content;
pub mod dirhash;
pub mod modfile;
pub mod modzip;
pub mod note;
pub mod osv;
pub mod path;
pub mod sumdb;
pub mod tlog;
pub mod version;
pub mod zip;
