//! Module paths, import paths and file paths, with golang.org/x/mod/module's exact rules:
//! `CheckPath`, `CheckImportPath`, `CheckFilePath`, case-escaping ("bang" encoding),
//! `SplitPathVersion` and `CheckPathMajor`. Pure: strings in, values or errors out.

use std::fmt;

use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};

use super::version;

/// Why a path, version or escaped string was rejected. The text follows the go command's wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("malformed module path {path:?}: {reason}")]
    Module { path: String, reason: PathReason },
    #[error("malformed import path {path:?}: {reason}")]
    Import { path: String, reason: PathReason },
    #[error("malformed file path {path:?}: {reason}")]
    File { path: String, reason: PathReason },
    #[error("invalid escaped module path {0:?}")]
    BadEscapedPath(String),
    #[error("invalid escaped version {0:?}")]
    BadEscapedVersion(String),
    #[error("{version:?} invalid: {reason}")]
    Version { version: String, reason: PathReason },
}

/// The go command's reason for refusing a path element or version, in its words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathReason {
    #[error("empty string")]
    Empty,
    #[error("leading dash")]
    LeadingDash,
    #[error("double slash")]
    DoubleSlash,
    #[error("trailing slash")]
    TrailingSlash,
    #[error("empty path element")]
    EmptyElement,
    #[error("invalid path element {0:?}")]
    DotsElement(String),
    #[error("leading dot in path element")]
    LeadingDot,
    #[error("trailing dot in path element")]
    TrailingDot,
    #[error("invalid char {0:?}")]
    InvalidChar(char),
    #[error("{0:?} disallowed as path element component on Windows")]
    WindowsName(String),
    #[error("trailing tilde and digits in path element")]
    TrailingTilde,
    #[error("leading slash")]
    LeadingSlash,
    #[error("missing dot in first path element")]
    MissingDot,
    #[error("leading dash in first path element")]
    LeadingDashFirst,
    #[error("invalid char {0:?} in first path element")]
    InvalidCharFirst(char),
    #[error("invalid version")]
    InvalidVersion,
    #[error("disallowed version string: {0}")]
    DisallowedVersion(Box<PathReason>),
    #[error("disallowed version string")]
    BangInVersion,
    #[error("should be {want}, not {got}")]
    WrongMajor { want: String, got: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Module,
    Import,
    File,
}

const BAD_WINDOWS_NAMES: [&str; 22] = [
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

fn mod_path_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')
}

fn import_path_ok(c: char) -> bool {
    mod_path_ok(c) || c == '+'
}

fn file_name_ok(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphanumeric() || "!#$%&()+,-.=@[]^_{}~ ".contains(c)
    } else {
        // Go's `unicode.IsLetter`: general category L only. Rust's `is_alphabetic` also
        // takes letter numbers (Ⅷ) and some combining marks (U+0345), which Go refuses.
        c.general_category_group() == GeneralCategoryGroup::Letter
    }
}

/// x/mod/zip's `strToFold`: two names collide on a case-insensitive file system, by the go
/// command's reckoning, exactly when their keys are equal. Unicode simple case folding, which
/// puts `ſ` with `s` and `ς` with `σ` (`to_lowercase` does neither, and lowers a final `Σ`
/// to `ς`). Checked against Go 1.19 over every code point: the same classes, but for case
/// pairs Unicode added after Go 1.19's tables (which later Go versions have).
pub fn fold_key(s: &str) -> String {
    s.chars()
        .map(|c| {
            unicode_case_mapping::case_folded(c)
                .and_then(|f| char::from_u32(f.get()))
                .unwrap_or(c)
        })
        .collect()
}

fn first_path_ok(c: char) -> bool {
    c == '-' || c == '.' || c.is_ascii_digit() || c.is_ascii_lowercase()
}

fn check_path_kind(path: &str, kind: Kind) -> Result<(), PathReason> {
    if path.is_empty() {
        return Err(PathReason::Empty);
    }
    if path.starts_with('-') && kind != Kind::File {
        return Err(PathReason::LeadingDash);
    }
    if path.contains("//") {
        return Err(PathReason::DoubleSlash);
    }
    if path.ends_with('/') {
        return Err(PathReason::TrailingSlash);
    }
    for elem in path.split('/') {
        check_elem(elem, kind)?;
    }
    Ok(())
}

fn check_elem(elem: &str, kind: Kind) -> Result<(), PathReason> {
    if elem.is_empty() {
        return Err(PathReason::EmptyElement);
    }
    if elem.bytes().all(|b| b == b'.') {
        return Err(PathReason::DotsElement(elem.to_string()));
    }
    if elem.starts_with('.') && kind == Kind::Module {
        return Err(PathReason::LeadingDot);
    }
    if elem.ends_with('.') {
        return Err(PathReason::TrailingDot);
    }
    for c in elem.chars() {
        let ok = match kind {
            Kind::Module => mod_path_ok(c),
            Kind::Import => import_path_ok(c),
            Kind::File => file_name_ok(c),
        };
        if !ok {
            return Err(PathReason::InvalidChar(c));
        }
    }
    let short = match elem.find('.') {
        Some(i) => &elem[..i],
        None => elem,
    };
    if BAD_WINDOWS_NAMES
        .iter()
        .any(|bad| bad.eq_ignore_ascii_case(short))
    {
        return Err(PathReason::WindowsName(short.to_string()));
    }
    if kind == Kind::File {
        return Ok(());
    }
    if let Some(tilde) = short.rfind('~')
        && tilde < short.len() - 1
        && short[tilde + 1..].bytes().all(|b| b.is_ascii_digit())
    {
        return Err(PathReason::TrailingTilde);
    }
    Ok(())
}

/// `module.CheckPath`: whether `path` is a valid module path.
pub fn check_path(path_: &str) -> Result<(), PathError> {
    let err = |reason: PathReason| PathError::Module {
        path: path_.to_string(),
        reason,
    };
    check_path_kind(path_, Kind::Module).map_err(err)?;
    let first = match path_.find('/') {
        Some(i) => &path_[..i],
        None => path_,
    };
    if first.is_empty() {
        return Err(err(PathReason::LeadingSlash));
    }
    if !first.contains('.') {
        return Err(err(PathReason::MissingDot));
    }
    if path_.starts_with('-') {
        return Err(err(PathReason::LeadingDashFirst));
    }
    if let Some(c) = first.chars().find(|&c| !first_path_ok(c)) {
        return Err(err(PathReason::InvalidCharFirst(c)));
    }
    if split_path_version(path_).is_none() {
        return Err(err(PathReason::InvalidVersion));
    }
    Ok(())
}

/// `module.CheckImportPath`.
pub fn check_import_path(path_: &str) -> Result<(), PathError> {
    check_path_kind(path_, Kind::Import).map_err(|reason| PathError::Import {
        path: path_.to_string(),
        reason,
    })
}

/// `module.CheckFilePath` (names inside module zips).
pub fn check_file_path(path_: &str) -> Result<(), PathError> {
    check_path_kind(path_, Kind::File).map_err(|reason| PathError::File {
        path: path_.to_string(),
        reason,
    })
}

/// `module.SplitPathVersion`: `(prefix, path_major)`, or `None` if the path's major-version
/// suffix is malformed (`/v0`, `/v1`, `/v01`, `/v1.2`, bad `gopkg.in` forms).
pub fn split_path_version(path: &str) -> Option<(&str, &str)> {
    if path.starts_with("gopkg.in/") {
        return split_gopkg_in(path);
    }
    let b = path.as_bytes();
    let mut i = b.len();
    let mut dot = false;
    while i > 0 && (b[i - 1].is_ascii_digit() || b[i - 1] == b'.') {
        if b[i - 1] == b'.' {
            dot = true;
        }
        i -= 1;
    }
    if i <= 1 || i == b.len() || b[i - 1] != b'v' || b[i - 2] != b'/' {
        return Some((path, ""));
    }
    let (prefix, major) = (&path[..i - 2], &path[i - 2..]);
    if dot || major.len() <= 2 || major.as_bytes()[2] == b'0' || major == "/v1" {
        return None;
    }
    Some((prefix, major))
}

fn split_gopkg_in(path: &str) -> Option<(&str, &str)> {
    let b = path.as_bytes();
    let mut i = b.len();
    if path.ends_with("-unstable") {
        i -= "-unstable".len();
    }
    while i > 0 && b[i - 1].is_ascii_digit() {
        i -= 1;
    }
    if i <= 1 || b[i - 1] != b'v' || b[i - 2] != b'.' {
        return None;
    }
    let (prefix, major) = (&path[..i - 2], &path[i - 2..]);
    if major.len() <= 2 || (major.as_bytes()[2] == b'0' && major != ".v0") {
        return None;
    }
    Some((prefix, major))
}

/// `module.CheckPathMajor`: whether version `v` fits the path's major suffix.
pub fn check_path_major(v: &str, path_major: &str) -> Result<(), PathError> {
    let mut pm = path_major;
    if pm.starts_with(".v") && pm.ends_with("-unstable") {
        pm = &pm[..pm.len() - "-unstable".len()];
    }
    if v.starts_with("v0.0.0-") && pm == ".v1" {
        return Ok(());
    }
    let m = version::major(v);
    let want = if pm.is_empty() {
        if m == "v0" || m == "v1" || version::build(v) == "+incompatible" {
            return Ok(());
        }
        "v0 or v1"
    } else {
        if m == pm[1..] {
            return Ok(());
        }
        &pm[1..]
    };
    Err(PathError::Version {
        version: v.to_string(),
        reason: PathReason::WrongMajor {
            want: want.to_string(),
            got: m.to_string(),
        },
    })
}

fn escape_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            out.push('!');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn unescape_string(escaped: &str) -> Option<String> {
    let mut out = String::with_capacity(escaped.len());
    let mut bang = false;
    for c in escaped.chars() {
        if !c.is_ascii() {
            return None;
        }
        if bang {
            bang = false;
            if !c.is_ascii_lowercase() {
                return None;
            }
            out.push(c.to_ascii_uppercase());
            continue;
        }
        if c == '!' {
            bang = true;
            continue;
        }
        if c.is_ascii_uppercase() {
            return None;
        }
        out.push(c);
    }
    if bang { None } else { Some(out) }
}

/// `module.EscapePath`.
pub fn escape_path(path: &str) -> Result<String, PathError> {
    check_path(path)?;
    Ok(escape_string(path))
}

/// `module.EscapeVersion`.
pub fn escape_version(v: &str) -> Result<String, PathError> {
    if let Err(reason) = check_elem(v, Kind::File) {
        return Err(PathError::Version {
            version: v.to_string(),
            reason: PathReason::DisallowedVersion(Box::new(reason)),
        });
    }
    if v.contains('!') {
        return Err(PathError::Version {
            version: v.to_string(),
            reason: PathReason::BangInVersion,
        });
    }
    Ok(escape_string(v))
}

/// `module.UnescapePath`: decodes `!x` and checks the result with [`check_path`].
pub fn unescape_path(escaped: &str) -> Result<String, PathError> {
    let path = unescape_string(escaped).ok_or_else(|| PathError::BadEscapedPath(escaped.into()))?;
    check_path(&path)?;
    Ok(path)
}

/// `module.UnescapeVersion`.
pub fn unescape_version(escaped: &str) -> Result<String, PathError> {
    let v = unescape_string(escaped).ok_or_else(|| PathError::BadEscapedVersion(escaped.into()))?;
    check_elem(&v, Kind::File).map_err(|reason| PathError::Version {
        version: v.clone(),
        reason,
    })?;
    Ok(v)
}

/// A valid module path (passed [`check_path`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModulePath(String);

impl ModulePath {
    /// Validates `path`.
    pub fn new(path: &str) -> Result<ModulePath, PathError> {
        check_path(path)?;
        Ok(ModulePath(path.to_string()))
    }

    /// Decodes and validates a bang-escaped path.
    pub fn from_escaped(escaped: &str) -> Result<ModulePath, PathError> {
        unescape_path(escaped).map(ModulePath)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The bang-escaped form, as used in URLs and cache keys.
    pub fn escaped(&self) -> String {
        escape_string(&self.0)
    }

    /// The path's major-version suffix (`""`, `/v2`, `.v1`, ...).
    pub fn path_major(&self) -> &str {
        split_path_version(&self.0).map(|(_, m)| m).unwrap_or("")
    }
}

impl fmt::Display for ModulePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_paths() {
        let ok = [
            "github.com/Azure/azure-sdk-for-go",
            "golang.org/x/mod",
            "example.com/m/v2",
            "gopkg.in/yaml.v2",
            "gopkg.in/check.v1-unstable",
            "gopkg.in/x.v0",
            "a.b/c~d",
            "x.y/_z",
            "example.com",
        ];
        for p in ok {
            assert!(check_path(p).is_ok(), "{p}: {:?}", check_path(p));
        }
        let bad = [
            ("", "empty string"),
            ("-x.com/a", "leading dash"),
            ("x.com//a", "double slash"),
            ("x.com/a/", "trailing slash"),
            ("x.com/./a", "invalid path element"),
            ("x.com/../a", "invalid path element"),
            ("x.com/.a", "leading dot"),
            ("x.com/a.", "trailing dot"),
            ("x.com/a b", "invalid char"),
            ("x.com/a+b", "invalid char"),
            ("x.com/a@b", "invalid char"),
            ("x.com/a\0b", "invalid char"),
            ("x.com/é", "invalid char"),
            ("x.com/CON", "disallowed"),
            ("x.com/com1.txt", "disallowed"),
            ("x.com/EXAMPL~1", "trailing tilde"),
            ("localhost/a", "missing dot"),
            ("Example.com/a", "first path element"),
            ("exa_mple.com/a", "first path element"),
            ("x.com/m/v0", "invalid version"),
            ("x.com/m/v1", "invalid version"),
            ("x.com/m/v01", "invalid version"),
            ("x.com/m/v1.2", "invalid version"),
            ("gopkg.in/yaml", "invalid version"),
            ("gopkg.in/yaml.v01", "invalid version"),
        ];
        for (p, want) in bad {
            let err = check_path(p).expect_err(p).to_string();
            assert!(err.contains(want), "{p:?}: {err}");
        }
    }

    #[test]
    fn import_and_file_paths() {
        assert!(check_import_path("x.com/a+b").is_ok());
        assert!(check_import_path("x.com/.hidden").is_ok());
        assert!(check_import_path("x.com/a b").is_err());
        assert!(check_file_path("dir/.hidden/-x (1)/ü.go").is_ok());
        // Letters are general category L, as Go's unicode.IsLetter: 中, ǅ, ʰ yes; a letter
        // number (Ⅷ), a combining mark (U+0345) or a non-ASCII digit (٣) no.
        assert!(check_file_path("中ǅʰ.go").is_ok());
        // Case-fold keys as Go's strToFold groups names.
        for (a, b) in [
            ("A.go", "a.go"),
            ("ſ.go", "S.go"),
            ("\u{212a}.go", "k.go"),
            ("ΑΣ.go", "ας.go"),
            ("ẞ", "ß"),
        ] {
            assert_eq!(fold_key(a), fold_key(b), "{a} {b}");
        }
        for (a, b) in [("ß", "ss"), ("ı", "i"), ("İ", "i"), ("é", "e")] {
            assert_ne!(fold_key(a), fold_key(b), "{a} {b}");
        }
        for name in ["Ⅷ.go", "a\u{345}.go", "٣.go"] {
            assert!(check_file_path(name).is_err(), "{name}");
        }
        assert!(check_file_path("-leading").is_ok());
        assert!(check_file_path("a/b:c").is_err());
        assert!(check_file_path("a\\b").is_err());
        assert!(check_file_path("a/*").is_err());
        assert!(check_file_path("aux.go").is_err());
        assert!(check_file_path("EXAMPL~1").is_ok());
        assert!(check_file_path("../x").is_err());
    }

    #[test]
    fn escaping_vectors_from_the_reference() {
        let cases = [
            (
                "github.com/Azure/azure-sdk-for-go",
                "github.com/!azure/azure-sdk-for-go",
            ),
            (
                "github.com/GoogleCloudPlatform/cloudsql-proxy",
                "github.com/!google!cloud!platform/cloudsql-proxy",
            ),
            ("rsc.io/quote", "rsc.io/quote"),
        ];
        for (path, esc) in cases {
            assert_eq!(escape_path(path).unwrap(), esc);
            assert_eq!(unescape_path(esc).unwrap(), path);
        }
        assert_eq!(escape_version("v1.0.0-RC1").unwrap(), "v1.0.0-!r!c1");
        assert_eq!(unescape_version("v1.0.0-!r!c1").unwrap(), "v1.0.0-RC1");
        for bad in [
            "github.com/Azure/x",
            "x.com/a!",
            "x.com/!A",
            "x.com/!1",
            "x.com/é",
        ] {
            assert!(unescape_path(bad).is_err(), "{bad}");
        }
        assert!(unescape_version("v1.0.0!").is_err());
        assert!(unescape_version("V1").is_err());
        assert!(unescape_version("a/b").is_err());
        assert!(escape_version("v1!").is_err());
        assert!(escape_version("feature/x").is_err());
    }

    #[test]
    fn path_major() {
        assert_eq!(split_path_version("x.com/m/v2"), Some(("x.com/m", "/v2")));
        assert_eq!(split_path_version("x.com/m"), Some(("x.com/m", "")));
        assert_eq!(
            split_path_version("gopkg.in/yaml.v2"),
            Some(("gopkg.in/yaml", ".v2"))
        );
        assert_eq!(
            split_path_version("gopkg.in/check.v1-unstable"),
            Some(("gopkg.in/check", ".v1-unstable"))
        );
        assert!(check_path_major("v1.2.3", "").is_ok());
        assert!(check_path_major("v0.1.0", "").is_ok());
        assert!(check_path_major("v2.0.0+incompatible", "").is_ok());
        assert!(check_path_major("v2.0.0", "").is_err());
        assert!(check_path_major("v2.1.0", "/v2").is_ok());
        assert!(check_path_major("v3.0.0", "/v2").is_err());
        assert!(check_path_major("v1.0.0", "/v2").is_err());
        assert!(check_path_major("v2.5.0", ".v2").is_ok());
        assert!(check_path_major("v0.0.0-20200101000000-abcdefabcdef", ".v1").is_ok());
        assert_eq!(
            check_path_major("v2.0.0", "").unwrap_err().to_string(),
            "\"v2.0.0\" invalid: should be v0 or v1, not v2"
        );
    }
}
