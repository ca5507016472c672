//! The `h1:` hash (golang.org/x/mod/sumdb/dirhash `Hash1`): SHA-256 over sorted
//! `"<sha256 hex>  <name>\n"` lines, base64-encoded. Used for go.sum lines.

use base64::Engine;
use sha2::{Digest, Sha256};

/// Why a hash could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("dirhash: filenames with newlines are not supported: {0:?}")]
    Newline(String),
    #[error(transparent)]
    Zip(#[from] zip::result::ZipError),
    #[error(transparent)]
    Read(#[from] std::io::Error),
}

/// `Hash1` over `(name, content)` pairs. Names containing a newline are refused.
pub fn hash1<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<String, HashError> {
    hash1_from_digests(
        files
            .into_iter()
            .map(|(name, data)| (name.to_string(), Sha256::digest(data).into())),
    )
}

/// `Hash1` from each file's SHA-256, for callers that hashed the data as they read it.
pub fn hash1_from_digests(
    files: impl IntoIterator<Item = (String, [u8; 32])>,
) -> Result<String, HashError> {
    let mut lines: Vec<(String, String)> = vec![];
    for (name, digest) in files {
        if name.contains('\n') {
            return Err(HashError::Newline(name));
        }
        lines.push((name, hex(&digest)));
    }
    lines.sort();
    let mut h = Sha256::new();
    for (name, sum) in &lines {
        h.update(format!("{sum}  {name}\n").as_bytes());
    }
    Ok(format!(
        "h1:{}",
        base64::engine::general_purpose::STANDARD.encode(h.finalize())
    ))
}

/// The go.sum hash of a go.mod file: `Hash1` over one file named `go.mod`.
pub fn hash_go_mod(data: &[u8]) -> String {
    hash1([("go.mod", data)]).expect("go.mod has no newline")
}

/// `HashZip`: `Hash1` over every entry of a zip, by its full name (directories hash as empty).
pub fn hash_zip<R: std::io::Read + std::io::Seek>(reader: R) -> Result<String, HashError> {
    let mut z = zip::ZipArchive::new(reader)?;
    let mut files: Vec<(String, Vec<u8>)> = vec![];
    for i in 0..z.len() {
        let mut f = z.by_index(i)?;
        let mut data = vec![];
        std::io::Read::read_to_end(&mut f, &mut data)?;
        files.push((f.name().to_string(), data));
    }
    hash1(files.iter().map(|(n, d)| (n.as_str(), d.as_slice())))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_vectors() {
        assert_eq!(
            hash_go_mod(b""),
            "h1:G7mAYYxgmS0lVkHyy2hEOLQCFB0DlQFTMLWggykrydY="
        );
        assert_eq!(
            hash_go_mod(b"module example.com/m\n"),
            "h1:flS2VctbRrTv+sBE+VKgxx6hlkMGPVz9MGOmzMYFg3k="
        );
    }

    #[test]
    fn order_does_not_matter_and_newlines_are_refused() {
        let a = hash1([("b", &b"2"[..]), ("a", &b"1"[..])]).unwrap();
        let b = hash1([("a", &b"1"[..]), ("b", &b"2"[..])]).unwrap();
        assert_eq!(a, b);
        assert!(hash1([("a\nb", &b""[..])]).is_err());
    }
}
