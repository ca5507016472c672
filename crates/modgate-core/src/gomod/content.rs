//! What a module file must look like before a proxy stores it: the go command's own checks on
//! what a GOPROXY sends (`modfetch`'s `proxyRepo`), applied at the gateway so that a truncated
//! or wrong answer is refused before it is cached, not discovered by every build after.
//!
//! - `.info`: JSON with a canonical `Version`, equal to the one asked for (a query or `@latest`
//!   may resolve to any canonical version), and an RFC 3339 `Time`;
//! - `.mod`: a go.mod with balanced blocks, closed strings, valid versions in `require` and
//!   `exclude`, and a module line naming the module asked for;
//! - `list`: one valid version per line;
//! - zips: the x/mod rules ([`super::zip::check_zip`]) and every entry's CRC-32 and size
//!   ([`super::zip::check_zip_data`]).

use super::path::ModulePath;
use super::version;

/// Why a file's content is refused. The text names what is wrong, for the client and the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadContent {
    #[error(".info is not a JSON object: {0}")]
    InfoJson(String),
    #[error(".info has no Version")]
    InfoNoVersion,
    #[error(".info Version {0:?} is not a canonical version")]
    InfoNotCanonical(String),
    #[error(".info is for version {got}, not the {want} asked for")]
    InfoVersion { want: String, got: String },
    #[error(".info has no Time")]
    InfoNoTime,
    #[error(".info Time {0:?} is not an RFC 3339 time")]
    InfoTime(String),
    #[error("go.mod line {line}: {reason}")]
    ModSyntax { line: usize, reason: &'static str },
    #[error("go.mod line {line}: invalid version {version:?}")]
    ModVersion { line: usize, version: String },
    #[error("go.mod declares module {got:?}, not {want}")]
    ModModule { want: String, got: String },
    #[error("list line {line}: {text:?} is not a valid version")]
    ListLine { line: usize, text: String },
}

/// Checks an `.info` answer. `asked` is the canonical version requested, or `None` for a query
/// or `@latest`.
pub fn check_info(data: &[u8], asked: Option<&str>) -> Result<(), BadContent> {
    let json: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| BadContent::InfoJson(e.to_string()))?;
    let obj = json
        .as_object()
        .ok_or_else(|| BadContent::InfoJson("not an object".into()))?;
    let got = obj
        .get("Version")
        .and_then(|v| v.as_str())
        .ok_or(BadContent::InfoNoVersion)?;
    if !version::is_canonical(got) {
        return Err(BadContent::InfoNotCanonical(got.to_string()));
    }
    if let Some(want) = asked
        && want != got
    {
        return Err(BadContent::InfoVersion {
            want: want.to_string(),
            got: got.to_string(),
        });
    }
    let t = obj
        .get("Time")
        .and_then(|v| v.as_str())
        .ok_or(BadContent::InfoNoTime)?;
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .map_err(|_| BadContent::InfoTime(t.to_string()))?;
    Ok(())
}

/// Checks a `list` answer: every line names a canonical version (what a GOPROXY lists; a
/// truncated line such as `v1.0` is valid semver but not canonical).
pub fn check_list(data: &[u8]) -> Result<(), BadContent> {
    let text = String::from_utf8_lossy(data);
    for (i, line) in text.lines().enumerate() {
        let v = line.trim();
        // Go's proxyRepo.Versions takes the first field of each line.
        let first = v.split_whitespace().next().unwrap_or("");
        if !first.is_empty() && !version::is_canonical(first) {
            return Err(BadContent::ListLine {
                line: i + 1,
                text: line.to_string(),
            });
        }
    }
    Ok(())
}

/// Checks a `.mod` answer for `module`: the syntax x/mod's lax parser needs (which is how the
/// go command reads a dependency's go.mod) and the module line.
pub fn check_mod(data: &[u8], module: &ModulePath) -> Result<(), BadContent> {
    let text = std::str::from_utf8(data).map_err(|_| BadContent::ModSyntax {
        line: 1,
        reason: "not UTF-8",
    })?;
    let mut block: Option<String> = None;
    let mut last_line = 0;
    for (i, raw) in text.split('\n').enumerate() {
        let n = i + 1;
        last_line = n;
        let tokens = tokens(raw).map_err(|reason| BadContent::ModSyntax { line: n, reason })?;
        let Some(first) = tokens.first() else {
            continue;
        };
        let (verb, args): (String, &[String]) = match &block {
            Some(_) if first == ")" => {
                if tokens.len() > 1 {
                    return Err(BadContent::ModSyntax {
                        line: n,
                        reason: "text after the closing parenthesis",
                    });
                }
                block = None;
                continue;
            }
            Some(verb) => (verb.clone(), &tokens[..]),
            None if tokens.len() == 2 && tokens[1] == "(" => {
                block = Some(first.clone());
                continue;
            }
            None if first == "(" || first == ")" => {
                return Err(BadContent::ModSyntax {
                    line: n,
                    reason: "unexpected parenthesis",
                });
            }
            None => (first.clone(), &tokens[1..]),
        };
        if matches!(verb.as_str(), "require" | "exclude") {
            match args {
                [_, v] if version::is_valid(v) => {}
                [_, v] => {
                    return Err(BadContent::ModVersion {
                        line: n,
                        version: v.clone(),
                    });
                }
                _ => {
                    return Err(BadContent::ModSyntax {
                        line: n,
                        reason: "expected a module path and a version",
                    });
                }
            }
        }
    }
    if block.is_some() {
        return Err(BadContent::ModSyntax {
            line: last_line,
            reason: "a block is not closed (the file ends inside parentheses)",
        });
    }
    let got = super::modfile::module_path(data);
    if got != module.as_str() {
        return Err(BadContent::ModModule {
            want: module.to_string(),
            got,
        });
    }
    Ok(())
}

/// One line's tokens, as x/mod's lexer splits them: comments dropped, quoted strings kept
/// whole (unquoted), parentheses their own tokens.
fn tokens(line: &str) -> Result<Vec<String>, &'static str> {
    let mut out = vec![];
    let mut chars = line.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        match c {
            ' ' | '\t' | '\r' => {
                chars.next();
            }
            '/' if line[i..].starts_with("//") => break,
            '(' | ')' => {
                out.push(c.to_string());
                chars.next();
            }
            '"' | '`' => {
                chars.next();
                let mut s = String::new();
                let mut closed = false;
                while let Some((_, d)) = chars.next() {
                    if d == c {
                        closed = true;
                        break;
                    }
                    if d == '\\' && c == '"' {
                        match chars.next() {
                            Some((_, e)) => s.push(e),
                            None => break,
                        }
                        continue;
                    }
                    s.push(d);
                }
                if !closed {
                    return Err("unterminated quoted string");
                }
                out.push(s);
            }
            _ => {
                let mut s = String::new();
                while let Some(&(j, d)) = chars.peek() {
                    if d.is_whitespace() || d == '(' || d == ')' || d == '"' || d == '`' {
                        break;
                    }
                    if d == '/' && line[j..].starts_with("//") {
                        break;
                    }
                    s.push(d);
                    chars.next();
                }
                out.push(s);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str) -> ModulePath {
        ModulePath::new(p).unwrap()
    }

    #[test]
    fn info_answers() {
        let good = br#"{"Version":"v1.0.0","Time":"2019-11-21T19:39:31Z"}"#;
        check_info(good, Some("v1.0.0")).unwrap();
        check_info(good, None).unwrap();
        let cases: [(&[u8], Option<&str>, &str); 6] = [
            (
                br#"{"Version": "v1.0.0""#,
                Some("v1.0.0"),
                "not a JSON object",
            ),
            (
                br#"{"Version":"v1.0.1","Time":"2019-11-21T19:39:31Z"}"#,
                Some("v1.0.0"),
                "not the v1.0.0",
            ),
            (
                br#"{"Version":"v1.0","Time":"2019-11-21T19:39:31Z"}"#,
                None,
                "not a canonical",
            ),
            (br#"{"Version":"v1.0.0"}"#, Some("v1.0.0"), "no Time"),
            (
                br#"{"Version":"v1.0.0","Time":"yesterday"}"#,
                None,
                "RFC 3339",
            ),
            (br#"["v1.0.0"]"#, None, "not an object"),
        ];
        for (data, asked, want) in cases {
            let err = check_info(data, asked).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{err} for {}",
                String::from_utf8_lossy(data)
            );
        }
    }

    #[test]
    fn list_answers() {
        check_list(b"v1.0.0\nv1.1.0-pre\nv2.0.0+incompatible\n").unwrap();
        check_list(b"").unwrap();
        check_list(b"v1.0.0 2019-11-21T19:39:31Z\n").unwrap();
        let err = check_list(b"v1.0.0\nv1.0").unwrap_err();
        assert_eq!(
            err,
            BadContent::ListLine {
                line: 2,
                text: "v1.0".into()
            }
        );
    }

    #[test]
    fn mod_answers() {
        let m1 = m("example.com/m");
        for good in [
            "module example.com/m\n",
            "module example.com/m\n\ngo 1.21\n\nrequire (\n\tgolang.org/x/mod v0.14.0 // indirect\n\t\"example.com/q\" v1.0.0\n)\n\nreplace example.com/q => ../q\nretract [v1.0.0, v1.0.5]\n",
            "// comment\nmodule \"example.com/m\" // trailing\nrequire example.com/q v1.2.3\nfuture_directive x y z\n",
        ] {
            check_mod(good.as_bytes(), &m1).unwrap_or_else(|e| panic!("{e}: {good}"));
        }
        let cases = [
            ("module exa", "declares module \"exa\""),
            (
                "module example.com/m\nrequire (\n\tgolang.org/x/mod v0.14.0\n",
                "not closed",
            ),
            (
                "module example.com/m\nrequire golang.org/x/mod v0.",
                "invalid version \"v0.\"",
            ),
            ("module \"example.com/m\nrequire x v1.0.0\n", "unterminated"),
            ("module example.com/other\n", "not example.com/m"),
            ("module example.com/m\n)\n", "unexpected parenthesis"),
            (
                "module example.com/m\nrequire (\n\tx\n)\n",
                "a module path and a version",
            ),
        ];
        for (data, want) in cases {
            let err = check_mod(data.as_bytes(), &m1).expect_err(data).to_string();
            assert!(err.contains(want), "{err} for {data:?}");
        }
    }
}
