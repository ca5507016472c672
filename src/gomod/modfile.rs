//! The two facts modgate reads from go.mod files, as golang.org/x/mod/modfile reads them:
//! the module path (`ModulePath`) and the `go` directive's language version.

/// `modfile.ModulePath`: the path in the first `module` line, or empty if none.
pub fn module_path(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    for line in text.split('\n') {
        let line = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let line = line.trim();
        let Some(rest) = line.strip_prefix("module") else {
            continue;
        };
        let trimmed = rest.trim();
        if trimmed.len() == rest.len() || trimmed.is_empty() {
            continue;
        }
        if trimmed.starts_with('"') || trimmed.starts_with('`') {
            return unquote(trimmed).unwrap_or_default();
        }
        return trimmed.to_string();
    }
    String::new()
}

fn unquote(s: &str) -> Option<String> {
    if let Some(inner) = s.strip_prefix('`').and_then(|r| r.strip_suffix('`')) {
        return Some(inner.to_string());
    }
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                '\\' => out.push('\\'),
                '"' => out.push('"'),
                _ => return None,
            },
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// The `go` directive's version (e.g. `1.21`), if any.
pub fn go_version(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    for line in text.split('\n') {
        let line = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut fields = line.split_whitespace();
        if fields.next() == Some("go")
            && let Some(v) = fields.next()
        {
            return Some(v.to_string());
        }
    }
    None
}

/// Whether Go language version `v` (`1.21`, `1.24.0`, `1.24rc1`) is at least `major.minor`.
pub fn go_at_least(v: &str, major: u32, minor: u32) -> bool {
    let mut parts = v.split('.');
    let maj: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let min: u32 = parts
        .next()
        .map(|p| {
            p.chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
        })
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    (maj, min) >= (major, minor)
}

/// The go.mod the go command synthesizes for a module without one.
pub fn synthesized(module: &str) -> String {
    format!("module {module}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_paths() {
        assert_eq!(
            module_path(b"module example.com/m\n\ngo 1.19\n"),
            "example.com/m"
        );
        assert_eq!(
            module_path(b"// c\nmodule  \"example.com/q\" // x\n"),
            "example.com/q"
        );
        assert_eq!(module_path(b"module `example.com/r`"), "example.com/r");
        assert_eq!(module_path(b"modulex example.com/m\n"), "");
        assert_eq!(module_path(b"go 1.19\n"), "");
        assert_eq!(
            module_path(b"  module example.com/m/v2\r\n"),
            "example.com/m/v2"
        );
    }

    #[test]
    fn go_versions() {
        assert_eq!(
            go_version(b"module m\n\ngo 1.24\n").as_deref(),
            Some("1.24")
        );
        assert_eq!(go_version(b"module m\n").as_deref(), None);
        assert!(go_at_least("1.24", 1, 24));
        assert!(go_at_least("1.24.1", 1, 24));
        assert!(go_at_least("1.25rc1", 1, 24));
        assert!(!go_at_least("1.19", 1, 24));
        assert!(!go_at_least("1.9", 1, 24));
    }
}
