//! Semantic versions as Go uses them (golang.org/x/mod/semver and module.CanonicalVersion), and
//! pseudo-version recognition. Pure.

use std::cmp::Ordering;

/// The parts of a valid semantic version. Short forms (`v1`, `v1.2`) fill in zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub major: &'a str,
    pub minor: &'a str,
    pub patch: &'a str,
    /// Short form suffix that was implied (`.0.0`, `.0` or empty).
    pub short: &'static str,
    /// Including the leading `-`, or empty.
    pub prerelease: &'a str,
    /// Including the leading `+`, or empty.
    pub build: &'a str,
}

fn parse_int(v: &str) -> Option<(&str, &str)> {
    let end = v.bytes().take_while(u8::is_ascii_digit).count();
    if end == 0 || (end > 1 && v.starts_with('0')) {
        return None;
    }
    Some((&v[..end], &v[end..]))
}

fn ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

/// Splits `-pre.release` off the front of `v`; numeric identifiers may not have leading zeros.
fn parse_prerelease(v: &str) -> Option<(&str, &str)> {
    let end = 1 + v[1..]
        .bytes()
        .take_while(|&b| ident_char(b) || b == b'.')
        .count();
    let (pre, rest) = v.split_at(end);
    for ident in pre[1..].split('.') {
        if ident.is_empty() {
            return None;
        }
        if ident.bytes().all(|b| b.is_ascii_digit()) && ident.len() > 1 && ident.starts_with('0') {
            return None;
        }
    }
    Some((pre, rest))
}

fn parse_build(v: &str) -> Option<(&str, &str)> {
    let end = 1 + v[1..]
        .bytes()
        .take_while(|&b| ident_char(b) || b == b'.')
        .count();
    let (build, rest) = v.split_at(end);
    if build[1..].split('.').any(str::is_empty) {
        return None;
    }
    Some((build, rest))
}

/// Parses `v` like semver.parse; `None` if invalid.
pub fn parse(v: &str) -> Option<Parsed<'_>> {
    let rest = v.strip_prefix('v')?;
    let (major, rest) = parse_int(rest)?;
    let mut p = Parsed {
        major,
        minor: "0",
        patch: "0",
        short: ".0.0",
        prerelease: "",
        build: "",
    };
    if rest.is_empty() {
        return Some(p);
    }
    let rest = rest.strip_prefix('.')?;
    let (minor, rest) = parse_int(rest)?;
    p.minor = minor;
    p.short = ".0";
    if rest.is_empty() {
        return Some(p);
    }
    let rest = rest.strip_prefix('.')?;
    let (patch, mut rest) = parse_int(rest)?;
    p.patch = patch;
    p.short = "";
    if rest.starts_with('-') {
        let (pre, r) = parse_prerelease(rest)?;
        p.prerelease = pre;
        rest = r;
    }
    if rest.starts_with('+') {
        let (build, r) = parse_build(rest)?;
        p.build = build;
        rest = r;
    }
    if !rest.is_empty() {
        return None;
    }
    Some(p)
}

/// `semver.IsValid`.
pub fn is_valid(v: &str) -> bool {
    parse(v).is_some()
}

/// `semver.Canonical`: `vMAJOR.MINOR.PATCH[-pre]`, build dropped; empty if invalid.
pub fn canonical(v: &str) -> String {
    match parse(v) {
        Some(p) => format!("v{}.{}.{}{}", p.major, p.minor, p.patch, p.prerelease),
        None => String::new(),
    }
}

/// `module.CanonicalVersion`: like [`canonical`] but keeps `+incompatible`.
pub fn module_canonical(v: &str) -> String {
    let c = canonical(v);
    if build(v) == "+incompatible" {
        c + "+incompatible"
    } else {
        c
    }
}

/// Whether `v` is a canonical module version (`module_canonical(v) == v`).
pub fn is_canonical(v: &str) -> bool {
    !v.is_empty() && module_canonical(v) == v
}

/// `semver.Major`: `vN`, or empty if invalid.
pub fn major(v: &str) -> String {
    parse(v)
        .map(|p| format!("v{}", p.major))
        .unwrap_or_default()
}

/// `semver.Build`: `+build` or empty.
pub fn build(v: &str) -> &str {
    parse(v).map(|p| p.build).unwrap_or("")
}

/// `semver.Prerelease`: `-pre` or empty.
pub fn prerelease(v: &str) -> &str {
    parse(v).map(|p| p.prerelease).unwrap_or("")
}

fn cmp_int(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn cmp_prerelease(a: &str, b: &str) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        _ => {}
    }
    let mut ai = a[1..].split('.');
    let mut bi = b[1..].split('.');
    loop {
        match (ai.next(), bi.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let xn = x.bytes().all(|c| c.is_ascii_digit());
                let yn = y.bytes().all(|c| c.is_ascii_digit());
                let o = match (xn, yn) {
                    (true, true) => cmp_int(x, y),
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    (false, false) => x.cmp(y),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

/// `semver.Compare`: invalid versions sort before all valid ones and equal each other.
pub fn compare(a: &str, b: &str) -> Ordering {
    match (parse(a), parse(b)) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) => cmp_int(x.major, y.major)
            .then_with(|| cmp_int(x.minor, y.minor))
            .then_with(|| cmp_int(x.patch, y.patch))
            .then_with(|| cmp_prerelease(x.prerelease, y.prerelease)),
    }
}

/// `module.IsPseudoVersion`: `vX.0.0-yyyymmddhhmmss-abcdef012345`,
/// `vX.Y.Z-pre.0.yyyymmddhhmmss-abcdef012345` or `vX.Y.(Z+1)-0.yyyymmddhhmmss-abcdef012345`,
/// with an optional `+build`.
pub fn is_pseudo(v: &str) -> bool {
    if v.matches('-').count() < 2 || !is_valid(v) {
        return false;
    }
    let body = match v.find('+') {
        Some(i) => &v[..i],
        None => v,
    };
    // The last two dash-separated fields are the timestamp and the revision.
    let Some((rest, rev)) = body.rsplit_once('-') else {
        return false;
    };
    if rev.is_empty() || !rev.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    // `rest` ends with 14 digits preceded by "-" (v0.0.0-) or "." (pre.0. / -0.).
    if rest.len() < 15 {
        return false;
    }
    let (head, stamp) = rest.split_at(rest.len() - 14);
    if !stamp.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    // head: v[0-9]+\.(0\.0-|\d+\.\d+-([^+]*\.)?0\.)
    let Some(h) = head.strip_prefix('v') else {
        return false;
    };
    let digits = h.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || h.as_bytes().get(digits) != Some(&b'.') {
        return false;
    }
    let h = &h[digits + 1..];
    if h == "0.0-" {
        return true;
    }
    // \d+\.\d+-([^+]*\.)?0\.
    let d1 = h.bytes().take_while(u8::is_ascii_digit).count();
    if d1 == 0 || h.as_bytes().get(d1) != Some(&b'.') {
        return false;
    }
    let h = &h[d1 + 1..];
    let d2 = h.bytes().take_while(u8::is_ascii_digit).count();
    if d2 == 0 || h.as_bytes().get(d2) != Some(&b'-') {
        return false;
    }
    let tail = &h[d2 + 1..];
    tail == "0." || (tail.ends_with(".0.") && !tail.contains('+'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_and_canonical_form() {
        let table = [
            ("v1", "v1.0.0"),
            ("v1.2", "v1.2.0"),
            ("v1.2.3", "v1.2.3"),
            ("v1.2.3-pre", "v1.2.3-pre"),
            ("v1.2.3-pre.1+meta", "v1.2.3-pre.1"),
            ("v2.0.0+incompatible", "v2.0.0"),
            (
                "v0.0.0-20191109021931-daa7c04131f5",
                "v0.0.0-20191109021931-daa7c04131f5",
            ),
        ];
        for (v, c) in table {
            assert!(is_valid(v), "{v}");
            assert_eq!(canonical(v), c, "{v}");
        }
        for bad in [
            "",
            "1.2.3",
            "v",
            "v01.2.3",
            "v1.02.3",
            "v1.2.03",
            "v1.2.3-",
            "v1.2.3-01",
            "v1.2.3-a..b",
            "v1.2.3+",
            "v1.2.3+a..b",
            "v1.2-pre",
            "v1.2.3.4",
            "v1.2.3 ",
            "V1.2.3",
            "v1.2.3-pre_x",
        ] {
            assert!(!is_valid(bad), "{bad:?}");
        }
        assert_eq!(
            module_canonical("v2.0.0+incompatible"),
            "v2.0.0+incompatible"
        );
        assert!(is_canonical("v2.0.0+incompatible"));
        assert!(!is_canonical("v1.2"));
        assert!(!is_canonical("v1.2.3+meta"));
        assert!(!is_canonical("master"));
    }

    #[test]
    fn ordering() {
        let ordered = [
            "v0.0.0-20190101000000-aaaaaaaaaaaa",
            "v0.1.0",
            "v1.0.0-alpha",
            "v1.0.0-alpha.1",
            "v1.0.0-alpha.beta",
            "v1.0.0-beta",
            "v1.0.0-beta.2",
            "v1.0.0-beta.11",
            "v1.0.0-rc.1",
            "v1.0.0",
            "v1.2.0",
            "v1.10.0",
            "v2.0.0+incompatible",
        ];
        for w in ordered.windows(2) {
            assert_eq!(compare(w[0], w[1]), Ordering::Less, "{} < {}", w[0], w[1]);
        }
        assert_eq!(compare("v1.0.0+a", "v1.0.0+b"), Ordering::Equal);
        assert_eq!(compare("bad", "v0.0.1"), Ordering::Less);
    }

    #[test]
    fn pseudo_versions() {
        for p in [
            "v0.0.0-20191109021931-daa7c04131f5",
            "v1.2.4-0.20191109021931-daa7c04131f5",
            "v1.2.3-pre.0.20191109021931-daa7c04131f5",
            "v2.0.0-20191109021931-daa7c04131f5+incompatible",
            "v1.3.0-alpha.rc.0.20191109021931-daa7c04131f5",
        ] {
            assert!(is_pseudo(p), "{p}");
        }
        for n in [
            "v1.2.3",
            "v1.2.3-pre",
            "v0.0.0-2019110902193-daa7c04131f5",
            "v1.2.4-1.20191109021931-daa7c04131f5",
            "v0.0.0-20191109021931-",
        ] {
            assert!(!is_pseudo(n), "{n}");
        }
    }
}
