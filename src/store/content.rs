//! What a writer checks in a complete entry before it is committed, and why it refuses one.

use std::fs::File;
use std::io;

use modgate_core::gomod::path::ModulePath;
use modgate_core::gomod::zip::{ZipError, check_zip};

/// Why an entry's content was refused before commit: nothing is stored.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("cannot read the complete entry: {0}")]
    Read(#[from] io::Error),
    #[error("invalid module zip for {module}@{version}: {source}")]
    Zip {
        module: ModulePath,
        version: String,
        source: ZipError,
    },
}

/// The x/mod zip rules, on a complete file.
pub fn check_zip_file(file: &File, module: &ModulePath, version: &str) -> Result<(), ContentError> {
    let len = file.metadata()?.len();
    check_zip(module, version, file, len).map_err(|source| ContentError::Zip {
        module: module.clone(),
        version: version.to_string(),
        source,
    })
}
