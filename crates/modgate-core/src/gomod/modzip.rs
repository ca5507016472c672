//! Which files go into a module zip built from a source tree, with golang.org/x/mod/zip's
//! `Create` rules: nested modules, vendored packages (the rule for the module's go version),
//! `.hg_archival.txt`, symlinks and other irregular files are left out; invalid names, case-fold
//! collisions and oversized files are errors. Pure: the caller lists the files and copies the
//! chosen ones.

use std::collections::HashSet;

use super::path::{check_file_path, fold_key};
use super::zip::{MAX_GO_MOD, MAX_LICENSE, MAX_ZIP_FILE};

/// One file of the source tree, by its path relative to the module root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: String,
    pub regular: bool,
    pub size: u64,
}

/// Why a module zip cannot be built (the go command would fail the same way).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    #[error("malformed file path {path:?}: {reason}")]
    File { path: String, reason: String },
    #[error("module source tree too large (max size is {MAX_ZIP_FILE} bytes)")]
    TooLarge,
}

/// x/mod's vendored-package test; `new_rule` is the go ≥ 1.24 behaviour.
pub fn is_vendored_package(name: &str, new_rule: bool) -> bool {
    if new_rule && name == "vendor/modules.txt" {
        return true;
    }
    let i = if let Some(rest) = name.strip_prefix("vendor/") {
        name.len() - rest.len()
    } else if let Some(j) = name.find("/vendor/") {
        if new_rule {
            j + "/vendor/".len()
        } else {
            // Go < 1.24 skips len("/vendor/") bytes from the start of the name (a kept bug).
            "/vendor/".len()
        }
    } else {
        return false;
    };
    // Bytes, as Go slices them: the old rule's offset can fall inside a multi-byte character.
    name.as_bytes()[i..].contains(&b'/')
}

/// Chooses the files of a module zip. Returns indices into `files`, in order.
pub fn select(files: &[SourceFile], go_version: Option<&str>) -> Result<Vec<usize>, CreateError> {
    let new_rule = go_version.is_some_and(|v| super::modfile::go_at_least(v, 1, 24));
    // Directories (other than the root) holding a regular go.mod are nested modules.
    let mut nested: HashSet<&str> = HashSet::new();
    for f in files {
        let (dir, base) = match f.path.rfind('/') {
            Some(i) => (&f.path[..=i], &f.path[i + 1..]),
            None => ("", f.path.as_str()),
        };
        if base.eq_ignore_ascii_case("go.mod") && f.regular {
            nested.insert(dir);
        }
    }
    let in_submodule = |p: &str| {
        let mut p = p;
        loop {
            let Some(i) = p.rfind('/') else { return false };
            let dir = &p[..=i];
            if nested.contains(dir) {
                return true;
            }
            p = &p[..i];
        }
    };
    let mut seen: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut budget = MAX_ZIP_FILE;
    let mut chosen = vec![];
    let err = |p: &str, reason: String| CreateError::File {
        path: p.to_string(),
        reason,
    };
    for (i, f) in files.iter().enumerate() {
        let p = f.path.as_str();
        if p.is_empty()
            || p.starts_with('/')
            || p.split('/').any(|e| e.is_empty() || e == "." || e == "..")
        {
            return Err(err(p, "file path is not clean".into()));
        }
        if is_vendored_package(p, new_rule) || in_submodule(p) || p == ".hg_archival.txt" {
            continue;
        }
        check_file_path(p).map_err(|e| err(p, e.to_string()))?;
        if p.eq_ignore_ascii_case("go.mod") && p != "go.mod" {
            return Err(err(p, "go.mod files must have lowercase names".into()));
        }
        // Case-fold collisions among files and their parent directories.
        let mut q = p;
        let mut is_dir = false;
        loop {
            let fold = fold_key(q);
            let tagged = format!("{}{}", if is_dir { "d:" } else { "f:" }, q);
            match seen.get(&fold) {
                Some(other) if other != &tagged => {
                    let other_path = &other[2..];
                    let reason = if other_path != q {
                        format!("case-insensitive file name collision: {other_path:?} and {q:?}")
                    } else {
                        format!("entry {q:?} is both a file and a directory")
                    };
                    return Err(err(p, reason));
                }
                Some(_) if !is_dir => {
                    return Err(err(p, format!("multiple entries for file {q:?}")));
                }
                Some(_) => {}
                None => {
                    seen.insert(fold, tagged);
                }
            }
            match q.rfind('/') {
                Some(j) => {
                    q = &q[..j];
                    is_dir = true;
                }
                None => break,
            }
        }
        if !f.regular {
            continue; // symlinks and other irregular files are left out
        }
        if f.size <= budget {
            budget -= f.size;
        } else {
            return Err(CreateError::TooLarge);
        }
        if p == "go.mod" && f.size > MAX_GO_MOD {
            return Err(err(
                p,
                format!("go.mod file too large (max size is {MAX_GO_MOD} bytes)"),
            ));
        }
        if p == "LICENSE" && f.size > MAX_LICENSE {
            return Err(err(
                p,
                format!("LICENSE file too large (max size is {MAX_LICENSE} bytes)"),
            ));
        }
        chosen.push(i);
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(path: &str) -> SourceFile {
        SourceFile {
            path: path.into(),
            regular: true,
            size: 1,
        }
    }

    fn chosen(files: &[SourceFile], go: Option<&str>) -> Vec<String> {
        select(files, go)
            .unwrap()
            .into_iter()
            .map(|i| files[i].path.clone())
            .collect()
    }

    #[test]
    fn vendor_rule_by_go_version() {
        // Go < 1.24 (what Go 1.19 always applies).
        for (name, want) in [
            ("vendor/modules.txt", false),
            ("vendor/x/y.go", true),
            ("vendor/y.go", false),
            ("pkg/vendor/x.go", true), // the kept bug
            ("pkg/vendor/a/b.go", true),
            ("a/b/vendor.go", false),
            ("vendored/x/y.go", false),
            // Byte 8 inside a character: Go slices bytes, and the rest holds a slash.
            ("日本語/vendor/x.go", true),
        ] {
            assert_eq!(is_vendored_package(name, false), want, "old {name}");
        }
        for (name, want) in [
            ("vendor/modules.txt", true),
            ("vendor/x/y.go", true),
            ("pkg/vendor/x.go", false),
            ("pkg/vendor/a/b.go", true),
        ] {
            assert_eq!(is_vendored_package(name, true), want, "new {name}");
        }
    }

    #[test]
    fn selection_rules() {
        let mut link = f("link.go");
        link.regular = false;
        let files = vec![
            f("go.mod"),
            f("a.go"),
            f("vendor/modules.txt"),
            f("vendor/dep/dep.go"),
            f("tools/go.mod"),
            f("tools/main.go"),
            f("tools/deep/x.go"),
            f(".hg_archival.txt"),
            f("sub/.hg_archival.txt"),
            link,
            f("LICENSE"),
        ];
        assert_eq!(
            chosen(&files, Some("1.19")),
            vec![
                "go.mod",
                "a.go",
                "vendor/modules.txt",
                "sub/.hg_archival.txt",
                "LICENSE"
            ]
        );
        assert_eq!(
            chosen(&files, Some("1.24")),
            vec!["go.mod", "a.go", "sub/.hg_archival.txt", "LICENSE"]
        );
    }

    #[test]
    fn refusals() {
        let cases: &[(&[&str], &str)] = &[
            (&["A.go", "a.go"], "case-insensitive"),
            (&["Dir/x.go", "dir/y.go"], "case-insensitive"),
            (&["s.go", "ſ.go"], "case-insensitive"),
            (&["GO.MOD"], "lowercase"),
            (&["a:b.go"], "invalid char"),
            (&["../x.go"], "not clean"),
        ];
        for (names, want) in cases {
            let files: Vec<SourceFile> = names.iter().map(|n| f(n)).collect();
            let e = select(&files, None).unwrap_err().to_string();
            assert!(e.contains(want), "{names:?}: {e}");
        }
        let mut big = f("go.mod");
        big.size = MAX_GO_MOD + 1;
        assert!(select(&[big], None).is_err());
    }
}
