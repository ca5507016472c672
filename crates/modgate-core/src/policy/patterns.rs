//! GOPRIVATE-style patterns with Go's exact semantics: `module.MatchPrefixPatterns` over a
//! faithful port of `path.Match`. Each glob is matched against the target's prefix with as many
//! path elements as the glob has; `*` and `?` never match `/`; matching is case-sensitive.

use std::fmt;

/// `path.ErrBadPattern`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPattern;

impl fmt::Display for BadPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("syntax error in pattern")
    }
}

/// Go's `path.Match(pattern, name)`.
pub fn path_match(mut pattern: &str, mut name: &str) -> Result<bool, BadPattern> {
    'pattern: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            // A trailing * matches the rest of the name unless it has a '/'.
            return Ok(!name.contains('/'));
        }
        let res = match_chunk(chunk, name);
        if let Ok(Some(t)) = res
            && (t.is_empty() || !pattern.is_empty())
        {
            name = t;
            continue;
        }
        res?;
        if star {
            // Try the chunk after skipping 1.. bytes, never skipping a '/'.
            let bytes = name.as_bytes();
            let mut i = 0;
            while i < bytes.len() && bytes[i] != b'/' {
                if name.is_char_boundary(i + 1) {
                    match match_chunk(chunk, &name[i + 1..])? {
                        Some(t) if pattern.is_empty() && !t.is_empty() => {}
                        Some(t) => {
                            name = t;
                            continue 'pattern;
                        }
                        None => {}
                    }
                }
                i += 1;
            }
        }
        // Fail, but first check that the rest of the pattern is well-formed.
        while !pattern.is_empty() {
            let (_, chunk, rest) = scan_chunk(pattern);
            pattern = rest;
            match_chunk(chunk, "")?;
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

fn scan_chunk(pattern: &str) -> (bool, &str, &str) {
    let mut p = pattern;
    let mut star = false;
    while let Some(rest) = p.strip_prefix('*') {
        p = rest;
        star = true;
    }
    let b = p.as_bytes();
    let mut in_range = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if i + 1 < b.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (star, &p[..i], &p[i..])
}

fn first_char(s: &str) -> (char, &str) {
    let c = s.chars().next().expect("non-empty");
    (c, &s[c.len_utf8()..])
}

/// Matches `chunk` at the start of `s`: `Ok(Some(rest))` on a match, `Ok(None)` on none.
fn match_chunk<'a>(mut chunk: &str, mut s: &'a str) -> Result<Option<&'a str>, BadPattern> {
    let mut failed = false;
    while !chunk.is_empty() {
        if !failed && s.is_empty() {
            failed = true;
        }
        let c = chunk.as_bytes()[0];
        match c {
            b'[' => {
                let mut r = '\0';
                if !failed {
                    let (ch, rest) = first_char(s);
                    r = ch;
                    s = rest;
                }
                chunk = &chunk[1..];
                let mut negated = false;
                if let Some(rest) = chunk.strip_prefix('^') {
                    negated = true;
                    chunk = rest;
                }
                let mut matched = false;
                let mut nrange = 0;
                loop {
                    if nrange > 0
                        && let Some(rest) = chunk.strip_prefix(']')
                    {
                        chunk = rest;
                        break;
                    }
                    let (lo, rest) = get_esc(chunk)?;
                    chunk = rest;
                    let mut hi = lo;
                    if let Some(rest) = chunk.strip_prefix('-') {
                        let (h, rest) = get_esc(rest)?;
                        hi = h;
                        chunk = rest;
                    }
                    if lo <= r && r <= hi {
                        matched = true;
                    }
                    nrange += 1;
                }
                if matched == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if s.starts_with('/') {
                        failed = true;
                    }
                    s = first_char(s).1;
                }
                chunk = &chunk[1..];
            }
            _ => {
                if c == b'\\' {
                    chunk = &chunk[1..];
                    if chunk.is_empty() {
                        return Err(BadPattern);
                    }
                }
                // Go compares byte by byte; comparing whole characters gives the same result
                // and keeps both slices on character boundaries.
                let (pc, prest) = first_char(chunk);
                if !failed {
                    let (sc, srest) = first_char(s);
                    if pc == sc {
                        s = srest;
                    } else {
                        failed = true;
                    }
                }
                chunk = prest;
            }
        }
    }
    if failed { Ok(None) } else { Ok(Some(s)) }
}

fn get_esc(chunk: &str) -> Result<(char, &str), BadPattern> {
    let mut c = chunk;
    if c.is_empty() || c.starts_with('-') || c.starts_with(']') {
        return Err(BadPattern);
    }
    if let Some(rest) = c.strip_prefix('\\') {
        c = rest;
        if c.is_empty() {
            return Err(BadPattern);
        }
    }
    let (r, rest) = first_char(c);
    if rest.is_empty() {
        return Err(BadPattern);
    }
    Ok((r, rest))
}

/// Go's `module.MatchPrefixPatterns(globs, target)`.
pub fn match_prefix_patterns(globs: &str, target: &str) -> bool {
    globs
        .split(',')
        .any(|glob| glob_matches_prefix(glob, target))
}

fn glob_matches_prefix(glob: &str, target: &str) -> bool {
    let glob = glob.strip_suffix('/').unwrap_or(glob);
    if glob.is_empty() {
        return false;
    }
    let mut n = glob.matches('/').count();
    let mut prefix = target;
    for (i, b) in target.bytes().enumerate() {
        if b == b'/' {
            if n == 0 {
                prefix = &target[..i];
                break;
            }
            n -= 1;
        }
    }
    if n > 0 {
        return false;
    }
    path_match(glob, prefix).unwrap_or(false)
}

/// A glob Go would silently ignore; configuration refuses it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed pattern {0:?}")]
pub struct MalformedPattern(pub String);

/// A validated list of GOPRIVATE-style globs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patterns {
    globs: Vec<String>,
}

impl Patterns {
    /// Splits each entry on `,` exactly as Go does (no trimming) and checks every glob's syntax;
    /// Go would silently ignore a malformed glob, so configuration refuses it instead.
    pub fn parse<'a>(
        entries: impl IntoIterator<Item = &'a str>,
    ) -> Result<Patterns, MalformedPattern> {
        let mut globs = vec![];
        for entry in entries {
            for glob in entry.split(',') {
                let trimmed = glob.strip_suffix('/').unwrap_or(glob);
                if trimmed.is_empty() {
                    continue;
                }
                if path_match(trimmed, "").is_err() {
                    return Err(MalformedPattern(glob.to_string()));
                }
                globs.push(glob.to_string());
            }
        }
        Ok(Patterns { globs })
    }

    /// The first glob matching `module_path`, if any.
    pub fn matching(&self, module_path: &str) -> Option<&str> {
        self.globs
            .iter()
            .find(|g| glob_matches_prefix(g, module_path))
            .map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.globs.is_empty()
    }

    /// The globs joined as a GOPRIVATE value.
    pub fn joined(&self) -> String {
        self.globs.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_worked_examples() {
        let table = [
            ("*.corp.com", "git.corp.com/team/repo", true),
            ("*.corp.com", "a.b.corp.com/x", true),
            ("*.corp.com", "corp.com/x", false),
            ("*.corp.com", "github.com/corp.com", false),
            (
                "github.com/org/private-*",
                "github.com/org/private-api",
                true,
            ),
            (
                "github.com/org/private-*",
                "github.com/org/private-api/v2/pkg",
                true,
            ),
            ("github.com/org/private-*", "github.com/org/private-", true),
            ("github.com/org/private-*", "github.com/org/private", false),
            (
                "github.com/org/private-*",
                "github.com/Org/private-x",
                false,
            ),
            ("github.com/org/private-*", "github.com/org", false),
            ("git.corp.com", "git.corp.com", true),
            ("git.corp.com", "git.corp.com/a/b", true),
            ("git.corp.com", "sub.git.corp.com/x", false),
            ("git.corp.com", "git.corp.com.evil.io/x", false),
            ("git.corp.com/", "git.corp.com/x", true),
            ("rsc.io/private", "rsc.io/private/quux", true),
        ];
        for (pattern, target, want) in table {
            assert_eq!(
                match_prefix_patterns(pattern, target),
                want,
                "{pattern} vs {target}"
            );
        }
    }

    #[test]
    fn list_semantics() {
        assert!(match_prefix_patterns("a.com,*.corp.com", "x.corp.com/y"));
        // No whitespace trimming: " b.com" is a different pattern.
        assert!(!match_prefix_patterns("a.com, b.com", "b.com/x"));
        assert!(!match_prefix_patterns("", "a.com"));
        assert!(!match_prefix_patterns(",,", "a.com"));
        // A malformed glob simply does not match.
        assert!(!match_prefix_patterns("a[", "a["));
    }

    #[test]
    fn path_match_cases() {
        let table: &[(&str, &str, Result<bool, BadPattern>)] = &[
            ("abc", "abc", Ok(true)),
            ("*", "abc", Ok(true)),
            ("*c", "abc", Ok(true)),
            ("a*", "a", Ok(true)),
            ("a*", "abc", Ok(true)),
            ("a*", "ab/c", Ok(false)),
            ("a*/b", "abc/b", Ok(true)),
            ("a*/b", "a/c/b", Ok(false)),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", Ok(true)),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", Ok(true)),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", Ok(false)),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", Ok(false)),
            ("a*b?c*x", "abxbbxdbxebxczzx", Ok(true)),
            ("a*b?c*x", "abxbbxdbxebxczzy", Ok(false)),
            ("ab[c]", "abc", Ok(true)),
            ("ab[b-d]", "abc", Ok(true)),
            ("ab[e-g]", "abc", Ok(false)),
            ("ab[^c]", "abc", Ok(false)),
            ("ab[^b-d]", "abc", Ok(false)),
            ("ab[^e-g]", "abc", Ok(true)),
            ("a\\*b", "a*b", Ok(true)),
            ("a\\*b", "ab", Ok(false)),
            ("a?b", "a☺b", Ok(true)),
            ("a[^a]b", "a☺b", Ok(true)),
            ("a???b", "a☺b", Ok(false)),
            ("a[^a][^a][^a]b", "a☺b", Ok(false)),
            ("[a-ζ]*", "α", Ok(true)),
            ("*[a-ζ]", "A", Ok(false)),
            ("a?b", "a/b", Ok(false)),
            ("a*b", "a/b", Ok(false)),
            ("[\\]a]", "]", Ok(true)),
            ("[\\-]", "-", Ok(true)),
            ("[x\\-]", "x", Ok(true)),
            ("[x\\-]", "-", Ok(true)),
            ("[x\\-]", "z", Ok(false)),
            ("[\\-x]", "x", Ok(true)),
            ("[\\-x]", "-", Ok(true)),
            ("[\\-x]", "a", Ok(false)),
            ("[]a]", "]", Err(BadPattern)),
            ("[-]", "-", Err(BadPattern)),
            ("[x-]", "x", Err(BadPattern)),
            ("[x-]", "-", Err(BadPattern)),
            ("[x-]", "z", Err(BadPattern)),
            ("[-x]", "x", Err(BadPattern)),
            ("[-x]", "-", Err(BadPattern)),
            ("[-x]", "a", Err(BadPattern)),
            ("\\", "a", Err(BadPattern)),
            ("[a-b-c]", "a", Err(BadPattern)),
            ("[", "a", Err(BadPattern)),
            ("[^", "a", Err(BadPattern)),
            ("[^bc", "a", Err(BadPattern)),
            ("a[", "a", Err(BadPattern)),
            ("a[", "ab", Err(BadPattern)),
            ("a[", "x", Err(BadPattern)),
            ("a/b[", "x", Err(BadPattern)),
            ("*x", "xxx", Ok(true)),
        ];
        for (pattern, name, want) in table {
            assert_eq!(
                path_match(pattern, name),
                *want,
                "Match({pattern:?}, {name:?})"
            );
        }
    }

    #[test]
    fn patterns_report_the_matching_rule_and_refuse_bad_syntax() {
        let p = Patterns::parse(["*.corp.example,github.com/acme/*", "corp.example/lib"]).unwrap();
        assert_eq!(p.matching("git.corp.example/x"), Some("*.corp.example"));
        assert_eq!(
            p.matching("github.com/acme/tool/v2"),
            Some("github.com/acme/*")
        );
        assert_eq!(p.matching("corp.example/lib/sub"), Some("corp.example/lib"));
        assert_eq!(p.matching("corp.example/other"), None);
        assert_eq!(p.matching("github.com/other/x"), None);
        assert!(Patterns::parse(["ok.com,bad["]).is_err());
    }

    /// A straightforward model of path.Match restricted to literals, `*` and `?`: recursive
    /// backtracking, written independently of the port above.
    fn model_match(p: &[char], s: &[char]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some('*') => (0..=s.len())
                .take_while(|&i| i == 0 || s[i - 1] != '/')
                .any(|i| model_match(&p[1..], &s[i..])),
            Some('?') => !s.is_empty() && s[0] != '/' && model_match(&p[1..], &s[1..]),
            Some(c) => !s.is_empty() && s[0] == *c && model_match(&p[1..], &s[1..]),
        }
    }

    fn model_prefix_patterns(globs: &str, target: &str) -> bool {
        let elems: Vec<&str> = target.split('/').collect();
        globs.split(',').any(|g| {
            let g = g.strip_suffix('/').unwrap_or(g);
            if g.is_empty() {
                return false;
            }
            let k = g.split('/').count();
            if elems.len() < k {
                return false;
            }
            let prefix = elems[..k].join("/");
            let pc: Vec<char> = g.chars().collect();
            let sc: Vec<char> = prefix.chars().collect();
            model_match(&pc, &sc)
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]

        #[test]
        fn port_agrees_with_model(pattern in "[ab./*?é-]{0,8}", name in "[ab./é-]{0,10}") {
            let pc: Vec<char> = pattern.chars().collect();
            let nc: Vec<char> = name.chars().collect();
            proptest::prop_assert_eq!(path_match(&pattern, &name).unwrap(), model_match(&pc, &nc));
        }

        #[test]
        fn prefix_patterns_agree_with_model(globs in "[ab.,/*?-]{0,10}", target in "[ab./-]{0,12}") {
            proptest::prop_assert_eq!(
                match_prefix_patterns(&globs, &target),
                model_prefix_patterns(&globs, &target)
            );
        }
    }
}
