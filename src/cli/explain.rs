//! `modgate explain`: what the gateway would do with a module path, `module@version` or a URL,
//! computed by the same pure `policy` code that serves requests; for `module@version`, also how
//! its files were proven (read from the integrity log). No network.

use std::fmt::Write as _;

use crate::config::Config;
use modgate_core::gomod::path::{escape_path, escape_version};

use crate::store::pins::{PinFile, Pins};
use modgate_core::policy::classify::Target;
use modgate_core::policy::egress::Decision;
use modgate_core::policy::goproxy::{Entry, GoProxyList};
use modgate_core::policy::host::normalize_host;
use modgate_core::policy::route::Route;

/// Explains `input` (a module path, or an `https://` / `http://` URL) under `config`.
pub fn explain(config: &Config, input: &str) -> anyhow::Result<String> {
    explain_for(config, input, &crate::cli::policy::Who::default())
}

/// [`explain`] for a client (`--as USER`, `--from ADDR`): for `module@version`, also the
/// module firewall's decision for that client.
pub fn explain_for(
    config: &Config,
    input: &str,
    who: &crate::cli::policy::Who,
) -> anyhow::Result<String> {
    let policy = crate::gateway::compile::policy(config)?;
    let is_url = input.starts_with("https://") || input.starts_with("http://");
    // module@version: the version's .info, and how its files were proven.
    let (path, version) = match input.split_once('@') {
        Some((m, v)) if !is_url => (m, Some(v)),
        _ => (input, None),
    };
    let url = if is_url {
        input.to_string()
    } else {
        // Bang-escaped (as in GOPROXY URLs and the module cache) or plain.
        let esc = if path.contains('!') {
            modgate_core::gomod::path::ModulePath::from_escaped(path)?.escaped()
        } else {
            escape_path(path)?
        };
        let host = config
            .modules
            .proxy_hosts
            .first()
            .cloned()
            .unwrap_or_else(|| "proxy.golang.org".into());
        match version {
            Some(v) => format!("https://{host}/{esc}/@v/{}.info", escape_version(v)?),
            None => format!("https://{host}/{esc}/@v/list"),
        }
    };
    let proof = match version {
        Some(v) => {
            let module = if path.contains('!') {
                modgate_core::gomod::path::ModulePath::from_escaped(path)?
                    .as_str()
                    .to_string()
            } else {
                path.to_string()
            };
            let mut lines = proof_lines(config, &module, v)?;
            if policy.rules.private.matching(&module).is_none() {
                lines.push_str(&crate::cli::policy::explain_lines(
                    config,
                    &policy.firewall,
                    &module,
                    v,
                    who,
                )?);
            }
            lines
        }
        None => String::new(),
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("invalid URL {url:?}: {e}"))?;
    let host = normalize_host(
        uri.host()
            .ok_or_else(|| anyhow::anyhow!("URL has no host"))?,
    );
    let mut out = String::new();
    let _ = writeln!(out, "input:       {input}");
    if url != input {
        let _ = writeln!(out, "request:     GET {url}");
    }
    // An http:// URL reaches the gateway as a plain-HTTP proxy request: forwarded, never
    // intercepted, under the same never-leak rule.
    let plain = uri.scheme() == Some(&http::uri::Scheme::HTTP);
    let decision = if plain {
        policy.egress.decide_forward(&host)
    } else {
        policy.egress.decide_connect(&host)
    };
    let _ = writeln!(
        out,
        "connection:  {}",
        match &decision {
            Decision::Intercept => format!("intercept ({host} is in the intercept set)"),
            Decision::Tunnel if plain =>
                format!("forward (plain HTTP to {host}; allowed by egress policy)"),
            Decision::Tunnel =>
                format!("tunnel ({host} is not intercepted; allowed by egress policy)"),
            Decision::Deny(reason) => format!("deny ({reason})"),
        }
    );
    if decision != Decision::Intercept && !(plain && decision == Decision::Tunnel) {
        return Ok(out);
    }
    let entry = if plain {
        modgate_core::policy::Entry::PlainHttp
    } else {
        modgate_core::policy::Entry::Intercepted
    };
    let (target, route) = match policy.decide(entry, &host, "GET", uri.path(), uri.query()) {
        Ok(v) => v,
        Err(e) => {
            let _ = writeln!(out, "target:      invalid");
            let _ = writeln!(
                out,
                "answer:      {} {e}",
                crate::serve::respond::ServeError::from(e.clone()).status()
            );
            return Ok(out);
        }
    };
    let _ = writeln!(out, "target:      {}", describe_target(&target));
    let rule = target
        .module_path()
        .and_then(|p| {
            policy
                .rules
                .private
                .matching(p)
                .map(|r| format!("private ({r:?} matches {p})"))
        })
        .unwrap_or_else(|| "none (public)".to_string());
    let _ = writeln!(out, "rule:        {rule}");
    // While the module firewall is active, a plain-HTTP GOPROXY call is answered through the
    // cache like an intercepted one (serve::forward).
    let through_cache = policy.firewall.is_active() && matches!(route, Route::Public(_));
    if plain && !through_cache && !matches!(route, Route::PrivateRefused { .. }) {
        let _ = writeln!(
            out,
            "route:       http_forward (forwarded unchanged to {host}; not cached)"
        );
        out.push_str(&proof);
        return Ok(out);
    }
    match &route {
        Route::Public(f) => {
            let _ = writeln!(
                out,
                "route:       public (cache, then the public GOPROXY list)"
            );
            let list = GoProxyList::parse(&config.modules.upstream)?;
            for e in list.entries() {
                match e {
                    Entry::Proxy { base, on_any_error } => {
                        let _ = writeln!(
                            out,
                            "upstream:    {}{}{}",
                            base,
                            f.upstream_path(),
                            if *on_any_error {
                                "  (then next on any error)"
                            } else {
                                "  (then next on 404/410)"
                            }
                        );
                    }
                    Entry::Off => {
                        let _ = writeln!(out, "upstream:    off (not found)");
                    }
                    Entry::Direct => {
                        let _ = writeln!(
                            out,
                            "upstream:    direct (go-get discovery on the code host, then git)"
                        );
                    }
                }
            }
            let _ = writeln!(out, "cache key:   {} ({})", f.key(), f.class().name());
        }
        Route::SumDb(f) => {
            let _ = writeln!(
                out,
                "route:       sumdb (cache, then the checksum database)"
            );
            if let Some(base) = config.sumdb.dbs.get(f.db()) {
                let _ = writeln!(
                    out,
                    "upstream:    {}{}",
                    base.trim_end_matches('/'),
                    f.upstream_path()
                );
            }
            let _ = writeln!(out, "cache key:   {} ({})", f.key(), f.class().name());
        }
        Route::SumDbSupported => {
            let _ = writeln!(out, "route:       sumdb supported (answered locally: 200)");
        }
        Route::OwnSumDb(_) => {
            let _ = writeln!(
                out,
                "route:       modgate's own checksum database (answered locally from its log; a version not yet recorded is proven first)"
            );
        }
        Route::PrivateRefused { message, .. } => {
            let _ = writeln!(
                out,
                "route:       private, refused locally (404); never sent to a public upstream"
            );
            let _ = writeln!(out, "answer:      {message}");
        }
        Route::Private(f) => {
            let _ = writeln!(
                out,
                "route:       private (built from the internal git repository; canonical answers cached)"
            );
            let _ = writeln!(
                out,
                "repository:  {} at {}",
                f.repo().root,
                f.repo().git_url
            );
            let _ = writeln!(out, "cache key:   {} ({})", f.key(), f.class().name());
        }
        Route::GoGetAnswer { root } => {
            let _ = writeln!(
                out,
                "route:       go-get answered locally: go-import {root} git https://{root}"
            );
        }
        Route::GitForward { repo, .. } => {
            let _ = writeln!(
                out,
                "route:       git forwarded with credentials to {}",
                repo.git_url
            );
        }
        Route::VulnDb(f) => {
            let _ = writeln!(
                out,
                "route:       vulndb (cache, then the vulnerability database {})",
                config.vulndb.url
            );
            let _ = writeln!(out, "cache key:   {} (mutable)", f.key());
        }
        Route::Forward => {
            let _ = writeln!(
                out,
                "route:       forward (unchanged to the host or its override; not cached)"
            );
        }
    }
    out.push_str(&proof);
    Ok(out)
}

fn describe_target(t: &Target) -> String {
    match t {
        Target::GoProxy { module, op } => match op.version() {
            Some(v) => format!("goproxy {} {module}@{v}", op.name()),
            None => format!("goproxy {} {module}", op.name()),
        },
        Target::SumDb { db, op } => format!("sumdb {} ({db})", op.name()),
        Target::GoGet { path } => format!("go-get discovery for {path}"),
        Target::Git { repo, service } => format!("git {service} for {repo}"),
        Target::VulnDb { db, path } => format!("vulndb {} ({db})", path.as_str()),
        Target::Other => "other (not a module protocol request)".to_string(),
    }
}

/// How `module@version`'s go.mod and zip were proven, from the integrity log.
fn proof_lines(config: &Config, module: &str, version: &str) -> anyhow::Result<String> {
    let log = Pins::new(&config.storage.data_dir);
    let pins = log.get(module, version)?;
    let proofs = log.proofs(module, version)?;
    let mut out = String::new();
    for (file, name) in [(PinFile::Mod, "go.mod"), (PinFile::Zip, "zip")] {
        let line = if let Some((_, p)) = pins.iter().find(|(f, _)| *f == file) {
            format!(
                "pinned {} (private, from commit {}, first served {})",
                p.h1, p.commit, p.at
            )
        } else if let Some((_, v)) = proofs.iter().find(|(f, _)| *f == file) {
            format!(
                "verified {} against {} (tree size {}, {})",
                v.h1, v.db, v.tree, v.at
            )
        } else {
            "not yet proven (not served since verification and pinning began)".to_string()
        };
        let _ = writeln!(out, "proof {name:<7}{line}");
    }
    if !config.sumdb.serve.is_empty() {
        let name = &config.sumdb.serve;
        let line = match crate::store::sumlog::SumLog::read_record(
            &config.storage.data_dir,
            name,
            module,
            version,
        )? {
            Some((id, source)) => format!("record {id} in {name} ({source})"),
            None => format!("no record in {name} yet (recorded at its first proof or lookup)"),
        };
        let _ = writeln!(out, "own sumdb    {line}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_public_private_and_invalid() {
        let mut cfg = Config::default();
        cfg.modules.private = crate::config::PatternList(vec!["*.corp.example".into()]);
        let out = explain(&cfg, "github.com/Azure/go-autorest").unwrap();
        assert!(
            out.contains("target:      goproxy list github.com/Azure/go-autorest"),
            "{out}"
        );
        assert!(out.contains("rule:        none (public)"), "{out}");
        assert!(
            out.contains(
                "upstream:    https://proxy.golang.org/github.com/%21azure/go-autorest/@v/list"
            ),
            "{out}"
        );
        assert!(
            out.contains("cache key:   mod/github.com/!azure/go-autorest/@v/list (mutable)"),
            "{out}"
        );

        let out = explain(
            &cfg,
            "https://proxy.golang.org/git.corp.example/x/@v/v1.0.0.zip",
        )
        .unwrap();
        assert!(
            out.contains("rule:        private (\"*.corp.example\" matches git.corp.example/x)"),
            "{out}"
        );
        assert!(out.contains("refused locally"), "{out}");

        let out = explain(
            &cfg,
            "https://sum.golang.org/lookup/golang.org/x/mod@v0.7.0",
        )
        .unwrap();
        assert!(
            out.contains("upstream:    https://sum.golang.org/lookup/golang.org/x/mod@v0.7.0"),
            "{out}"
        );
        assert!(out.contains("(immutable)"), "{out}");

        let out = explain(&cfg, "https://proxy.golang.org/example.com/%2e%2e/@v/list").unwrap();
        assert!(out.contains("answer:      400"), "{out}");

        let out = explain(&cfg, "https://github.com/").unwrap();
        assert!(out.contains("connection:  tunnel"), "{out}");
        assert!(explain(&cfg, "Not A Path").is_err());
        // Bang-escaped paths, as warm and GOPROXY URLs write them, name the same module.
        let out = explain(&cfg, "github.com/!azure/go-autorest@v1.0.0").unwrap();
        assert!(
            out.contains("target:      goproxy info github.com/Azure/go-autorest@v1.0.0"),
            "{out}"
        );
        // An http:// URL is forwarded as plain HTTP, as the gateway does, not intercepted.
        let out = explain(&cfg, "http://proxy.golang.org/github.com/x/y/@v/list").unwrap();
        assert!(
            out.contains("connection:  forward (plain HTTP")
                && out.contains("route:       http_forward"),
            "{out}"
        );
    }
}
