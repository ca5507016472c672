//! The facts modgate reads from go.mod files, as golang.org/x/mod/modfile reads them: the
//! module path (`ModulePath`), the `go` directive's language version and the `retract`
//! directives.

use super::version;

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

/// A retracted interval of versions, both ends included, as written in the go.mod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retraction {
    pub low: String,
    pub high: String,
}

impl Retraction {
    pub fn covers(&self, v: &str) -> bool {
        version::compare(&self.low, v).is_le() && version::compare(v, &self.high).is_le()
    }
}

/// The `retract` directives (`retract v1.0.0`, `retract [v1.0.0, v1.0.5]`, and blocks of
/// them) as `modfile.ParseLax` reads a module's go.mod for its retractions: versions kept as
/// written (not checked: `dontFixRetract`), a directive that does not parse skipped, anything
/// after the interval ignored. `None` when the file itself does not lex (an unterminated
/// string): the go command's parse then fails, and it treats nothing as retracted.
pub fn retractions(data: &[u8]) -> Option<Vec<Retraction>> {
    let text = String::from_utf8_lossy(data);
    let mut out = vec![];
    // Inside `verb ( … )`: whether the verb is retract.
    let mut block: Option<bool> = None;
    for line in text.split('\n') {
        let toks = tokens(line)?;
        if let Some(retract) = block {
            match toks.as_slice() {
                [] => {}
                [t] if t == ")" => block = None,
                _ if retract => out.extend(interval(&toks)),
                _ => {}
            }
            continue;
        }
        match toks.split_first() {
            Some((verb, [open])) if open == "(" => block = Some(verb == "retract"),
            Some((verb, rest)) if verb == "retract" => out.extend(interval(rest)),
            _ => {}
        }
    }
    Some(out)
}

/// One line's tokens, comments dropped: words, quoted strings, and `( ) [ ] ,` on their own.
fn tokens(line: &str) -> Option<Vec<String>> {
    let mut out = vec![];
    let mut rest = line.trim();
    while !rest.is_empty() {
        if rest.starts_with("//") {
            break;
        }
        let c = rest.chars().next().expect("not empty");
        if c.is_whitespace() {
            rest = rest.trim_start();
            continue;
        }
        if "()[],".contains(c) {
            out.push(c.to_string());
            rest = &rest[1..];
            continue;
        }
        if c == '"' || c == '`' {
            let end = rest[1..].find(c)? + 2;
            out.push(unquote(&rest[..end])?);
            rest = &rest[end..];
            continue;
        }
        let end = rest
            .find(|ch: char| ch.is_whitespace() || "()[],\"`".contains(ch) || ch == '/')
            .unwrap_or(rest.len())
            .max(1);
        out.push(rest[..end].to_string());
        rest = &rest[end..];
    }
    Some(out)
}

/// `parseVersionInterval`: a version, or `[low, high]`; what follows is not looked at.
fn interval(toks: &[String]) -> Option<Retraction> {
    match toks {
        [open, low, comma, high, close, ..] if open == "[" && comma == "," && close == "]" => {
            Some(Retraction {
                low: low.clone(),
                high: high.clone(),
            })
        }
        [open, ..] if open == "[" || open == "(" => None,
        [v, ..] => Some(Retraction {
            low: v.clone(),
            high: v.clone(),
        }),
        [] => None,
    }
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
    fn retract_directives() {
        let gomod = b"module example.com/m\n\ngo 1.19\n\n\
retract v1.1.0 // published by mistake\n\
retract [v1.2.0, v1.2.5]\n\
retract (\n\
\t// both broken\n\
\tv1.3\n\
\t[\"v1.4.0\",v1.4.1]\n\
)\n\
require (\n\
\tretract v1.0.0 // a module named retract, not a directive\n\
)\n";
        let r = retractions(gomod).unwrap();
        let pairs: Vec<(&str, &str)> = r.iter().map(|r| (&*r.low, &*r.high)).collect();
        assert_eq!(
            pairs,
            [
                ("v1.1.0", "v1.1.0"),
                ("v1.2.0", "v1.2.5"),
                ("v1.3", "v1.3"),
                ("v1.4.0", "v1.4.1")
            ]
        );
        assert!(r[1].covers("v1.2.3") && !r[1].covers("v1.2.6") && !r[1].covers("v1.1.9"));
        // Compared as semver: v1.3 is v1.3.0.
        assert!(r[2].covers("v1.3.0"));
        assert_eq!(retractions(b"module m\n").unwrap(), vec![]);
        // Directives that do not parse are skipped, as ParseLax skips them (checked against Go
        // 1.19's x/mod); the others still count. A version that is not one covers nothing.
        for bad in [
            "retract [v1.0.0]\n",
            "retract (\n\t[v1.0.0,\n)\n",
            "retract latest\n",
        ] {
            let r = retractions(format!("retract v1.1.0\n{bad}").as_bytes()).unwrap();
            assert!(r.iter().any(|r| r.covers("v1.1.0")), "{bad}");
            assert!(!r.iter().any(|r| r.covers("v1.0.0")), "{bad}");
        }
        let r = retractions(b"retract v1.0.0 v1.0.1\n").unwrap();
        assert!(r[0].covers("v1.0.0") && !r[0].covers("v1.0.1"));
        // A file that does not lex is no go.mod at all.
        assert_eq!(retractions(b"retract \"v1.0.0\n"), None);
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
