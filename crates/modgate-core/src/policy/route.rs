//! `route`: from a [`Target`] and the private-module rules to the [`Route`] a request takes.
//!
//! This is the one place the never-leak invariant is decided: [`PublicFetch`] and
//! [`SumDbFetch`], the only routes that reach public upstreams, can be constructed only here, and
//! only for module paths that match no private pattern. Pure.

use crate::cache_key::CacheKey;
use crate::gomod::path::ModulePath;
use crate::policy::classify::{ProxyOp, SumDbOp, Target};
use crate::policy::patterns::Patterns;
use crate::policy::private::{PrivateRoutes, RepoMatch};

/// How long a cached answer stays valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheClass {
    /// Never changes once served (`.mod`, `.zip`, canonical `.info`, sumdb lookups, full tiles).
    Immutable,
    /// May change (`list`, `@latest`, queries, partial tiles, `/latest`): TTL, stale on error.
    Mutable,
}

impl CacheClass {
    pub fn name(&self) -> &'static str {
        match self {
            CacheClass::Immutable => "immutable",
            CacheClass::Mutable => "mutable",
        }
    }
}

/// What kind of bytes an entry holds; decides content type and validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    Text,
    Json,
    Zip,
    Binary,
}

impl Content {
    pub fn content_type(&self) -> &'static str {
        match self {
            Content::Text => "text/plain; charset=utf-8",
            Content::Json => "application/json",
            Content::Zip => "application/zip",
            Content::Binary => "application/octet-stream",
        }
    }
}

/// How long the answer to a GOPROXY operation stays valid.
fn op_class(op: &ProxyOp) -> CacheClass {
    match op {
        ProxyOp::Info(_) | ProxyOp::Mod(_) | ProxyOp::Zip(_) => CacheClass::Immutable,
        ProxyOp::List | ProxyOp::Query(_) | ProxyOp::Latest => CacheClass::Mutable,
    }
}

/// What kind of bytes a GOPROXY operation answers with.
fn op_content(op: &ProxyOp) -> Content {
    match op {
        ProxyOp::List | ProxyOp::Mod(_) => Content::Text,
        ProxyOp::Info(_) | ProxyOp::Query(_) | ProxyOp::Latest => Content::Json,
        ProxyOp::Zip(_) => Content::Zip,
    }
}

/// A GOPROXY call for a public module: served from the cache or the public upstream list.
/// Constructed only by [`route`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicFetch {
    module: ModulePath,
    op: ProxyOp,
    key: CacheKey,
    upstream_path: String,
}

impl PublicFetch {
    pub fn module(&self) -> &ModulePath {
        &self.module
    }
    pub fn op(&self) -> &ProxyOp {
        &self.op
    }
    pub fn key(&self) -> &CacheKey {
        &self.key
    }
    /// Path to append to each upstream GOPROXY base URL.
    pub fn upstream_path(&self) -> &str {
        &self.upstream_path
    }
    pub fn class(&self) -> CacheClass {
        op_class(&self.op)
    }
    pub fn content(&self) -> Content {
        op_content(&self.op)
    }
}

/// A checksum-database call for a configured database. Constructed only by [`route`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SumDbFetch {
    db: String,
    op: SumDbOp,
    key: CacheKey,
    upstream_path: String,
}

impl SumDbFetch {
    pub fn db(&self) -> &str {
        &self.db
    }
    pub fn op(&self) -> &SumDbOp {
        &self.op
    }
    pub fn key(&self) -> &CacheKey {
        &self.key
    }
    /// Path to append to the database's base URL.
    pub fn upstream_path(&self) -> &str {
        &self.upstream_path
    }
    pub fn class(&self) -> CacheClass {
        match &self.op {
            SumDbOp::Lookup { .. } => CacheClass::Immutable,
            SumDbOp::Tile(t) if t.is_full() => CacheClass::Immutable,
            _ => CacheClass::Mutable,
        }
    }
    pub fn content(&self) -> Content {
        match &self.op {
            SumDbOp::Tile(t) if t.l >= 0 => Content::Binary,
            _ => Content::Text,
        }
    }
}

/// A file of the Go vulnerability database: served from the cache, then the database. Files
/// that name a private module (the legacy per-module files) are refused by [`route`] instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VulnDbFetch {
    key: CacheKey,
    path: String,
}

impl VulnDbFetch {
    pub fn key(&self) -> &CacheKey {
        &self.key
    }
    /// Path to append to the database's base URL.
    pub fn upstream_path(&self) -> &str {
        &self.path
    }
}

/// A GOPROXY call for a private module, served from its internal git repository.
/// Constructed only by [`route`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateFetch {
    module: ModulePath,
    op: ProxyOp,
    repo: RepoMatch,
    key: CacheKey,
}

impl PrivateFetch {
    pub fn module(&self) -> &ModulePath {
        &self.module
    }
    pub fn op(&self) -> &ProxyOp {
        &self.op
    }
    pub fn repo(&self) -> &RepoMatch {
        &self.repo
    }
    /// Cache key for canonical results (same scheme as public entries).
    pub fn key(&self) -> &CacheKey {
        &self.key
    }
    pub fn class(&self) -> CacheClass {
        op_class(&self.op)
    }
    pub fn content(&self) -> Content {
        op_content(&self.op)
    }
}

/// The way a request is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Public module: cache, then the upstream GOPROXY list.
    Public(PublicFetch),
    /// Checksum database: cache, then the database.
    SumDb(SumDbFetch),
    /// `/sumdb/<name>/supported` for a configured database: answered locally with 200.
    SumDbSupported,
    /// modgate's own checksum database (`sumdb.serve`): answered locally, for public and
    /// private modules alike (nothing leaves modgate).
    OwnSumDb(SumDbOp),
    /// A private module path: answered locally, never forwarded.
    PrivateRefused {
        /// The matching private pattern.
        rule: String,
        /// Bounded label: goproxy, sumdb, goget or git.
        kind: &'static str,
        /// 404 text for the go command's user.
        message: String,
    },
    /// A private module's GOPROXY call, built from its internal git repository.
    Private(PrivateFetch),
    /// `?go-get=1` for a private path: answered locally with a go-import tag.
    GoGetAnswer {
        /// The repository root's module path.
        root: String,
    },
    /// Git smart-HTTP for a private repository: forwarded to the internal host with credentials.
    GitForward {
        repo: RepoMatch,
        /// The request-path prefix naming the repository (e.g. `/team/lib.git`).
        request_prefix: String,
    },
    /// A file of the Go vulnerability database.
    VulnDb(VulnDbFetch),
    /// Non-module traffic on an intercepted host: forwarded unchanged.
    Forward,
}

impl Route {
    /// Bounded label.
    pub fn name(&self) -> &'static str {
        match self {
            Route::Public(_) => "public",
            Route::SumDb(_) => "sumdb",
            Route::SumDbSupported => "sumdb",
            Route::OwnSumDb(_) => "own_sumdb",
            Route::PrivateRefused { .. } => "private_refused",
            Route::Private(_) => "private",
            Route::GoGetAnswer { .. } => "goget_answer",
            Route::GitForward { .. } => "git_forward",
            Route::VulnDb(_) => "vulndb",
            Route::Forward => "forward",
        }
    }
}

/// The rules `route` applies.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub private: Patterns,
    pub routes: PrivateRoutes,
    /// The name of modgate's own checksum database, if it serves one.
    pub own_sumdb: Option<String>,
}

/// Decides the route for `target`.
/// How a request reached modgate: the never-leak rule holds for each, decided here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Over TLS that modgate terminated: after CONNECT, or redirected to the gateway-mode
    /// listener with a ClientHello.
    Intercepted,
    /// In plain HTTP: an absolute-form request on the proxy listener (`GOPROXY=http://...`
    /// through `HTTP_PROXY`), or a redirected port-80 connection in gateway mode. Forwarded as
    /// it came unless a private path makes it local.
    PlainHttp,
    /// To modgate's own GOPROXY endpoint (`endpoint.listen`), over TLS. Every request is a
    /// GOPROXY or checksum-database read; nothing is forwarded as it came. The endpoint in
    /// plain HTTP enters as [`Entry::PlainHttp`]: private modules are not served over it.
    Endpoint,
}

/// What [`route_request`] needs to know of a request beyond its [`Target`].
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub entry: Entry,
    /// The host the request is for (normalized).
    pub host: &'a str,
    /// The path as received (still percent-encoded).
    pub raw_path: &'a str,
    /// Whether `host` is a module proxy or checksum database (reads only).
    pub read_only_host: bool,
}

/// The one never-leak decision: the route for `target`, with every way a private module path
/// could leave modgate closed off.
///
/// - A module path matching a private pattern takes a private route, or is refused locally.
/// - A request that is no module protocol (the go command's own GET of a repository URL after
///   git failed, git's dumb protocol, a web page) for a repository a private route serves from
///   another host is refused: the private name does not go on to the host the route stands in
///   for (`github.com/acme/{repo}` served from an internal host). When the host is the route's
///   own git host, nothing leaks and the request goes on.
/// - In plain HTTP, private modules are served by no route (modgate serves them over https://
///   only), so a private route's answer becomes a local refusal; so does modgate's own
///   checksum database (its lookups name private modules too).
/// - modgate's own checksum database is answered locally for every module path.
pub fn route_request(target: &Target, rules: &Rules, req: &RequestFacts<'_>) -> Route {
    let route = match target {
        Target::Other => private_other(rules, req).unwrap_or_else(|| route(target, rules)),
        _ => route(target, rules),
    };
    match (req.entry, route) {
        (Entry::PlainHttp, Route::OwnSumDb(_)) => Route::PrivateRefused {
            rule: "sumdb.serve".to_string(),
            kind: target.kind(),
            message: format!(
                "not found: modgate's checksum database {} is served over https:// only",
                rules.own_sumdb.as_deref().unwrap_or_default()
            ),
        },
        (
            Entry::PlainHttp,
            Route::Private(_) | Route::GoGetAnswer { .. } | Route::GitForward { .. },
        ) => {
            let path = crate::policy::classify::percent_decode(req.raw_path)
                .unwrap_or_else(|_| req.raw_path.to_string());
            Route::PrivateRefused {
                rule: target
                    .module_path()
                    .and_then(|m| rules.private.matching(m))
                    .unwrap_or("private route")
                    .to_string(),
                kind: target.kind(),
                message: format!(
                    "not found: {}{path} is private; modgate serves private modules over https:// only",
                    req.host
                ),
            }
        }
        (_, route) => route,
    }
}

/// [`route_request`]'s rule for unclassified requests on a host a private route stands in for.
fn private_other(rules: &Rules, req: &RequestFacts<'_>) -> Option<Route> {
    if rules.routes.is_empty() || req.read_only_host {
        return None;
    }
    let host = req.host;
    let path = crate::policy::classify::percent_decode(req.raw_path).ok()?;
    let candidate = format!("{host}{}", path.trim_end_matches('/'));
    let repo = rules.routes.repo_for(&candidate)?;
    let git_host = http::Uri::try_from(repo.git_url.as_str())
        .ok()
        .and_then(|u| u.host().map(crate::policy::host::normalize_host));
    if git_host.as_deref() == Some(host) {
        return None;
    }
    Some(Route::PrivateRefused {
        message: format!(
            "not found: {candidate} is private (served by a private route from its internal host); modgate answers it with go-get discovery and git only, and does not forward other requests for it to {host}"
        ),
        rule: format!("private route for {}", repo.root),
        kind: "other",
    })
}

/// The route for a classified request, whatever way it came (see [`route_request`]).
pub fn route(target: &Target, rules: &Rules) -> Route {
    if let Target::SumDb { db, op } = target
        && rules.own_sumdb.as_deref() == Some(db.as_str())
    {
        return Route::OwnSumDb(op.clone());
    }
    if let Some(path) = target.module_path()
        && let Some(rule) = rules.private.matching(path)
    {
        return private_route(target, path, rule, &rules.routes)
            .unwrap_or_else(|| private_refusal(target, path, rule));
    }
    match target {
        Target::GoProxy { module, op } => {
            let esc = module.escaped();
            let tail = match op {
                ProxyOp::List => "@v/list".to_string(),
                ProxyOp::Latest => "@latest".to_string(),
                ProxyOp::Info(v) | ProxyOp::Query(v) => format!("@v/{}.info", escape_v(v)),
                ProxyOp::Mod(v) => format!("@v/{}.mod", escape_v(v)),
                ProxyOp::Zip(v) => format!("@v/{}.zip", escape_v(v)),
            };
            Route::Public(PublicFetch {
                module: module.clone(),
                op: op.clone(),
                key: CacheKey::proxy(module, op),
                upstream_path: go_path_escape(&format!("/{esc}/{tail}")),
            })
        }
        Target::SumDb {
            op: SumDbOp::Supported,
            ..
        } => Route::SumDbSupported,
        Target::SumDb { db, op } => {
            let tail = match op {
                SumDbOp::Latest => "latest".to_string(),
                SumDbOp::Lookup { module, version } => {
                    format!("lookup/{}@{}", module.escaped(), escape_v(version))
                }
                SumDbOp::Tile(t) => t.path(),
                SumDbOp::Supported => unreachable!("handled above"),
            };
            Route::SumDb(SumDbFetch {
                db: db.clone(),
                op: op.clone(),
                key: CacheKey::sumdb(db, op).expect("supported is handled above"),
                upstream_path: go_path_escape(&format!("/{tail}")),
            })
        }
        Target::VulnDb { db, path } => {
            // The legacy format names modules in file names (`golang.org/x/text.json`).
            let named = path.as_str().strip_suffix(".json").and_then(|m| {
                let legacy = !m.starts_with("index/") && !m.starts_with("ID/") && m.contains('/');
                legacy.then(|| ModulePath::from_escaped(m).ok()).flatten()
            });
            if let Some(m) = named
                && let Some(rule) = rules.private.matching(m.as_str())
            {
                return Route::PrivateRefused {
                    rule: rule.to_string(),
                    kind: "vulndb",
                    message: format!(
                        "not found: {m} is private (matches {rule:?}); its advisories are never looked up in a public vulnerability database"
                    ),
                };
            }
            Route::VulnDb(VulnDbFetch {
                key: CacheKey::vulndb(db, path.clone()),
                path: format!("/{}", path.as_str()),
            })
        }
        Target::GoGet { .. } | Target::Git { .. } | Target::Other => Route::Forward,
    }
}

/// The private route for a private target, if one serves it.
fn private_route(
    target: &Target,
    path: &str,
    _rule: &str,
    routes: &PrivateRoutes,
) -> Option<Route> {
    let repo = routes.repo_for(path)?;
    match target {
        Target::GoProxy { module, op } => {
            let Route::Public(f) = route(target, &Rules::default()) else {
                unreachable!("a GOPROXY target routes to a fetch without rules")
            };
            Some(Route::Private(PrivateFetch {
                module: module.clone(),
                op: op.clone(),
                repo,
                key: f.key,
            }))
        }
        Target::GoGet { .. } => Some(Route::GoGetAnswer { root: repo.root }),
        Target::Git {
            repo: requested,
            service,
        } => {
            // Git talks to the repository root only, and modgate forwards fetches only.
            let requested_path = requested.strip_suffix(".git").unwrap_or(requested);
            if requested_path != repo.root || *service != "git-upload-pack" {
                return None;
            }
            let host_len = requested.find('/').unwrap_or(requested.len());
            Some(Route::GitForward {
                request_prefix: requested[host_len..].to_string(),
                repo,
            })
        }
        _ => None,
    }
}

fn escape_v(v: &str) -> String {
    crate::gomod::path::escape_version(v).unwrap_or_else(|_| v.to_string())
}

fn private_refusal(target: &Target, path: &str, rule: &str) -> Route {
    let (kind, message) = match target {
        Target::SumDb { .. } => (
            "sumdb",
            format!(
                "not found: {path} is private (matches {rule:?}) and is never looked up in a public checksum database; add the pattern to GONOSUMDB (or GOPRIVATE)"
            ),
        ),
        Target::GoGet { .. } => (
            "goget",
            format!(
                "not found: {path} is private (matches {rule:?}); modgate answers discovery for private modules only through a configured private route"
            ),
        ),
        Target::Git { .. } => (
            "git",
            format!(
                "not found: {path} is private (matches {rule:?}); modgate forwards git for private modules only through a configured private route"
            ),
        ),
        _ => (
            "goproxy",
            format!(
                "not found: {path} is private (matches {rule:?}) and is never fetched from a public proxy; modgate serves private modules through a configured private route, or set GOPRIVATE so the go command fetches it directly"
            ),
        ),
    };
    Route::PrivateRefused {
        rule: rule.to_string(),
        kind,
        message,
    }
}

/// Go's path escaping for URLs (`url.PathEscape` with slashes kept): unreserved characters and
/// `$&+,/:;=@` stay, everything else is `%XX` (so `!` is sent as `%21`, like the go command).
pub fn go_path_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@".contains(&b);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
