//! Private routes: which internal git repository serves a private module path. A template such as
//! `git.corp.example/{group}/{repo}` names the repository root's module path, one `{name}` per
//! path element; the git URL template uses the same names. Pure.

/// One path element of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Elem {
    Lit(String),
    Var(String),
}

/// A compiled `[[private.routes]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTemplate {
    elems: Vec<Elem>,
    git: String,
}

/// A module path's repository, found through a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoMatch {
    /// Index of the route in configuration order.
    pub route: usize,
    /// Module path of the repository root.
    pub root: String,
    /// The repository's git URL.
    pub git_url: String,
}

/// Why a `[[private.routes]]` template is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("the first element (the host) must be literal")]
    HostPlaceholder,
    #[error("bad placeholder {0:?}")]
    BadPlaceholder(String),
    #[error("placeholders must be whole path elements: {0:?}")]
    PartialElement(String),
    #[error("{template:?}: {source}")]
    Path {
        template: String,
        source: crate::gomod::path::PathError,
    },
    #[error("{0:?} must be an https:// or http:// URL")]
    GitScheme(String),
    #[error("unclosed placeholder in {0:?}")]
    Unclosed(String),
    #[error("placeholder {{{0}}} is not in the module template")]
    Unknown(String),
}

impl TemplateError {
    /// The template field at fault: `module` or `git`.
    pub fn field(&self) -> &'static str {
        match self {
            TemplateError::HostPlaceholder
            | TemplateError::BadPlaceholder(_)
            | TemplateError::PartialElement(_)
            | TemplateError::Path { .. } => "module",
            TemplateError::GitScheme(_)
            | TemplateError::Unclosed(_)
            | TemplateError::Unknown(_) => "git",
        }
    }
}

impl RouteTemplate {
    /// Compiles a template; the error names the field (`module` or `git`) at fault.
    pub fn parse(module: &str, git: &str) -> Result<RouteTemplate, TemplateError> {
        let mut elems = vec![];
        let mut names = vec![];
        for (i, e) in module.split('/').enumerate() {
            if let Some(name) = e.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                if i == 0 {
                    return Err(TemplateError::HostPlaceholder);
                }
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(TemplateError::BadPlaceholder(e.to_string()));
                }
                names.push(name.to_string());
                elems.push(Elem::Var(name.to_string()));
            } else {
                if e.contains(['{', '}']) {
                    return Err(TemplateError::PartialElement(e.to_string()));
                }
                elems.push(Elem::Lit(e.to_string()));
            }
        }
        let literal: String = module.replace(['{', '}'], "");
        crate::gomod::path::check_path(&literal.replace("//", "/x/")).map_err(|source| {
            TemplateError::Path {
                template: module.to_string(),
                source,
            }
        })?;
        if !(git.starts_with("https://") || git.starts_with("http://")) {
            return Err(TemplateError::GitScheme(git.to_string()));
        }
        let mut rest = git;
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| TemplateError::Unclosed(git.to_string()))?;
            let name = &rest[open + 1..open + close];
            if !names.iter().any(|n| n == name) {
                return Err(TemplateError::Unknown(name.to_string()));
            }
            rest = &rest[open + close + 1..];
        }
        Ok(RouteTemplate {
            elems,
            git: git.to_string(),
        })
    }

    /// The host (first element).
    pub fn host(&self) -> &str {
        match &self.elems[0] {
            Elem::Lit(h) => h,
            Elem::Var(_) => unreachable!("first element is literal"),
        }
    }

    /// The literal prefix before the first placeholder, as a GOPRIVATE pattern.
    pub fn pattern(&self) -> String {
        self.elems
            .iter()
            .take_while(|e| matches!(e, Elem::Lit(_)))
            .map(|e| match e {
                Elem::Lit(s) => s.as_str(),
                Elem::Var(_) => "",
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Matches the first elements of `path`; returns the root and the git URL.
    fn matches(&self, path: &str) -> Option<(String, String)> {
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() < self.elems.len() {
            return None;
        }
        let mut git = self.git.clone();
        for (e, p) in self.elems.iter().zip(&parts) {
            match e {
                Elem::Lit(l) if l == p => {}
                Elem::Lit(_) => return None,
                Elem::Var(name) => {
                    if p.is_empty() {
                        return None;
                    }
                    git = git.replace(&format!("{{{name}}}"), p);
                }
            }
        }
        Some((parts[..self.elems.len()].join("/"), git))
    }
}

/// All private routes, tried in configuration order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrivateRoutes {
    routes: Vec<RouteTemplate>,
}

impl PrivateRoutes {
    pub fn new(routes: Vec<RouteTemplate>) -> PrivateRoutes {
        PrivateRoutes { routes }
    }

    /// The repository serving `path` (a module or import path), if a route covers it.
    pub fn repo_for(&self, path: &str) -> Option<RepoMatch> {
        self.routes.iter().enumerate().find_map(|(i, t)| {
            t.matches(path).map(|(root, git_url)| RepoMatch {
                route: i,
                root,
                git_url,
            })
        })
    }

    /// Hosts to intercept.
    pub fn hosts(&self) -> Vec<String> {
        self.routes.iter().map(|t| t.host().to_string()).collect()
    }

    /// GOPRIVATE patterns implied by the routes.
    pub fn patterns(&self) -> Vec<String> {
        self.routes.iter().map(RouteTemplate::pattern).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> PrivateRoutes {
        PrivateRoutes::new(vec![
            RouteTemplate::parse("corp.example/lib", "https://git2.internal/libs/corelib.git")
                .unwrap(),
            RouteTemplate::parse(
                "git.corp.example/{group}/{repo}",
                "https://git.internal:8443/{group}/{repo}.git",
            )
            .unwrap(),
        ])
    }

    #[test]
    fn repositories_for_paths() {
        let r = routes();
        let m = r.repo_for("git.corp.example/team/alpha/sub/pkg").unwrap();
        assert_eq!(
            (m.route, m.root.as_str(), m.git_url.as_str()),
            (
                1,
                "git.corp.example/team/alpha",
                "https://git.internal:8443/team/alpha.git"
            )
        );
        let m = r.repo_for("corp.example/lib/v2").unwrap();
        assert_eq!(
            (m.root.as_str(), m.git_url.as_str()),
            ("corp.example/lib", "https://git2.internal/libs/corelib.git")
        );
        assert!(r.repo_for("git.corp.example/team").is_none());
        assert!(r.repo_for("corp.example/other").is_none());
        assert_eq!(r.hosts(), vec!["corp.example", "git.corp.example"]);
        assert_eq!(r.patterns(), vec!["corp.example/lib", "git.corp.example"]);
    }

    #[test]
    fn bad_templates() {
        for (m, g, field) in [
            ("{host}/x", "https://g/{host}", "module"),
            ("corp.example/{x", "https://g/", "module"),
            ("corp.example/a{x}", "https://g/{x}", "module"),
            ("corp.example/{x}", "ssh://g/{x}", "git"),
            ("corp.example/{x}", "https://g/{y}", "git"),
            ("Corp.example/{x}", "https://g/{x}", "module"),
        ] {
            assert_eq!(
                RouteTemplate::parse(m, g).unwrap_err().field(),
                field,
                "{m} {g}"
            );
        }
    }
}
