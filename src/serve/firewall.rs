//! The module firewall on the request path: every public GOPROXY answer is checked against the
//! rules (`policy::firewall`, pure) with the facts those rules need — publish times from `.info`,
//! retractions from the latest go.mod, advisories from the vulnerability database — gathered
//! through the cache as internal requests. A refused file is a 403 (never 404/410, so a GOPROXY
//! list cannot fall through to a source that bypasses the rule); `list` loses the refused
//! versions, and `@latest` answers the newest allowed one.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{Method, Response, StatusCode};

use crate::body::Body;
use crate::serve::respond::ServeError;
use crate::serve::{Live, State, cached};
use crate::telemetry::ctx::ReqCtx;
use modgate_core::gomod::path::ModulePath;
use modgate_core::gomod::version;
use modgate_core::policy::classify::{ProxyOp, Target};
use modgate_core::policy::firewall::{
    Client, Decision, Facts, Firewall, Purpose, Verdict, info_version,
};
use modgate_core::policy::route::{PublicFetch, Route, Rules, route};

/// How many versions of one `list` are looked up at once.
const LIST_CONCURRENCY: usize = 8;

/// Serves a public GOPROXY call through the firewall (which is active).
pub async fn public(
    f: PublicFetch,
    ctx: &mut ReqCtx,
    state: &Arc<State>,
    dynamic: &Live,
    method: &Method,
) -> Result<Response<Body>, ServeError> {
    let client_user = ctx.user.clone();
    let gate = Gate {
        state,
        fw: &dynamic.policy.firewall,
        module: f.module(),
        client: Client {
            user: client_user.as_deref(),
            addr: Some(ctx.conn.client.ip()),
        },
        now: SystemTime::now(),
        retractions: tokio::sync::OnceCell::new(),
    };
    let spec = super::public_spec(&f, dynamic);
    match f.op().clone() {
        ProxyOp::Info(v) | ProxyOp::Mod(v) | ProxyOp::Zip(v) => {
            let d = gate.decide(&v, Purpose::Fetch).await;
            gate.record(&v, f.op().name(), &d, true);
            if d.verdict == Verdict::Refused {
                return Err(gate.refusal(&v, &d).await);
            }
            cached::serve(spec, ctx, state, method).await
        }
        ProxyOp::List => {
            let (resp, body) =
                match answered(cached::serve(spec, ctx, state, &Method::GET).await?).await? {
                    Answered::Body(parts, body) => (parts, body),
                    Answered::Other(resp) => return Ok(resp),
                };
            let text = String::from_utf8_lossy(&body).into_owned();
            let kept = gate
                .allowed(text.lines().map(str::trim), Some("list"))
                .await;
            let mut out = kept.join("\n");
            if !out.is_empty() {
                out.push('\n');
            }
            Ok(Response::from_parts(resp, crate::body::full(out)))
        }
        ProxyOp::Latest | ProxyOp::Query(_) => {
            let (resp, body) =
                match answered(cached::serve(spec, ctx, state, &Method::GET).await?).await? {
                    Answered::Body(parts, body) => (parts, body),
                    Answered::Other(resp) => return Ok(resp),
                };
            let Some(v) = info_version(&body) else {
                return Ok(Response::from_parts(resp, crate::body::full(body)));
            };
            let d = gate.decide(&v, Purpose::Choose).await;
            gate.record(&v, f.op().name(), &d, true);
            if d.verdict == Verdict::Allowed {
                return Ok(Response::from_parts(resp, crate::body::full(body)));
            }
            if matches!(f.op(), ProxyOp::Query(_)) {
                return Err(gate.refusal(&v, &d).await);
            }
            // @latest: the newest version the rules allow instead.
            match gate.newest_allowed(Some("latest")).await {
                Some(newest) => match gate.fetch(ProxyOp::Info(newest.clone())).await {
                    Ok(Some(info)) => Ok(Response::from_parts(resp, crate::body::full(info))),
                    Ok(None) => Err(ServeError::UpstreamFailed(format!(
                        "modgate: {}@{newest}, the newest version the firewall allows, has no .info upstream",
                        f.module()
                    ))),
                    Err(e) => Err(ServeError::UpstreamFailed(e)),
                },
                None => Err(gate.refusal(&v, &d).await),
            }
        }
    }
}

/// The version `@latest` answers among `versions`: the newest release, else the newest
/// pre-release (pseudo-versions are not listed).
fn newest<'v>(versions: impl Iterator<Item = &'v str>) -> Option<String> {
    let versions: Vec<&str> = versions
        .filter(|v| version::is_valid(v) && !version::is_pseudo(v))
        .collect();
    let best = |release: bool| {
        versions
            .iter()
            .filter(|v| version::prerelease(v).is_empty() == release)
            .max_by(|a, b| version::compare(a, b))
            .map(|v| v.to_string())
    };
    best(true).or_else(|| best(false))
}

/// A 200 answer's head and whole body, or any other answer as it is.
enum Answered {
    Body(http::response::Parts, Bytes),
    Other(Response<Body>),
}

async fn answered(resp: Response<Body>) -> Result<Answered, ServeError> {
    if resp.status() != StatusCode::OK {
        return Ok(Answered::Other(resp));
    }
    let (mut parts, body) = resp.into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .map_err(|e| ServeError::UpstreamFailed(format!("reading the upstream answer: {e}")))?
        .to_bytes();
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Ok(Answered::Body(parts, body))
}

/// One request's view of the firewall: the module, the client, and what was looked up.
struct Gate<'a> {
    state: &'a Arc<State>,
    fw: &'a Firewall,
    module: &'a ModulePath,
    client: Client<'a>,
    now: SystemTime,
    /// The module's retractions (from its latest go.mod), looked up once.
    retractions: tokio::sync::OnceCell<Vec<modgate_core::gomod::modfile::Retraction>>,
}

impl Gate<'_> {
    /// Decides one version, gathering what its rules need.
    async fn decide(&self, v: &str, purpose: Purpose) -> Decision {
        let needs = self
            .fw
            .needs(self.module.as_str(), v, &self.client, purpose);
        let mut facts = Facts::default();
        if needs.published
            && let Ok(Some(info)) = self.fetch(ProxyOp::Info(v.to_string())).await
        {
            facts.published = modgate_core::policy::firewall::info_time(&info);
        }
        if needs.retracted {
            let retractions = self
                .retractions
                .get_or_init(|| async { self.load_retractions().await })
                .await;
            facts.retracted = retractions.iter().any(|r| r.covers(v));
        }
        if needs.advisories {
            match crate::serve::vulndb::advisories(self.state, self.module.as_str(), v).await {
                Ok(a) => facts.advisories = a,
                Err(e) => facts.advisories_unknown = Some(e),
            }
        }
        self.fw.decide(
            self.module.as_str(),
            v,
            &self.client,
            purpose,
            &facts,
            self.now,
        )
    }

    /// The retractions of the module's latest version's go.mod: the newest release of `list`
    /// (else the newest pre-release), or `@latest` when the list is empty, as the go command
    /// finds it.
    async fn load_retractions(&self) -> Vec<modgate_core::gomod::modfile::Retraction> {
        let listed = match self.fetch(ProxyOp::List).await {
            Ok(Some(list)) => newest(String::from_utf8_lossy(&list).lines().map(str::trim)),
            _ => None,
        };
        let latest = match listed {
            Some(v) => Some(v),
            None => match self.fetch(ProxyOp::Latest).await {
                Ok(Some(info)) => info_version(&info),
                _ => None,
            },
        };
        let Some(v) = latest else {
            return vec![];
        };
        match self.fetch(ProxyOp::Mod(v)).await {
            Ok(Some(m)) => modgate_core::gomod::modfile::retractions(&m).unwrap_or_default(),
            _ => vec![],
        }
    }

    /// Counts a decision and writes its audit line. `always`: also when it allowed without any
    /// rule matching (a file fetch); the versions of a `list` are logged only when refused or
    /// reported.
    fn record(&self, v: &str, op: &str, d: &Decision, always: bool) {
        let m = &self.state.metrics.firewall_decisions;
        m.with_label_values(&[d.rule.as_str(), d.verdict.name()])
            .inc();
        for (rule, _) in &d.reported {
            m.with_label_values(&[rule.as_str(), "reported"]).inc();
        }
        if !always && d.verdict == Verdict::Allowed && d.reported.is_empty() {
            return;
        }
        let reported = d
            .reported
            .iter()
            .map(|(rule, why)| format!("{rule}: {why}"))
            .collect::<Vec<_>>()
            .join("; ");
        tracing::info!(
            target: "modgate::audit",
            module = self.module.as_str(),
            version = v,
            op,
            rule = d.rule.as_str(),
            group = d.group.as_str(),
            user = self.client.user,
            client = self.client.addr.map(|a| a.to_string()).as_deref(),
            verdict = d.verdict.name(),
            why = d.why.as_str(),
            reported = reported.as_str(),
            "firewall decision"
        );
    }

    /// The versions of `versions` the rules allow to be chosen, in their order.
    /// `op`: the operation to count and log the decisions under; `None` decides quietly (for the
    /// "newest allowed" of a refusal's text, which is no decision the client asked for).
    async fn allowed<'v>(
        &self,
        versions: impl Iterator<Item = &'v str>,
        op: Option<&str>,
    ) -> Vec<String> {
        let versions: Vec<String> = versions
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect();
        let decided: Vec<(String, Decision)> = futures_util::stream::iter(versions)
            .map(|v| async move {
                let d = self.decide(&v, Purpose::Choose).await;
                (v, d)
            })
            .buffered(LIST_CONCURRENCY)
            .collect()
            .await;
        decided
            .into_iter()
            .filter_map(|(v, d)| {
                if let Some(op) = op {
                    self.record(&v, op, &d, false);
                }
                (d.verdict == Verdict::Allowed).then_some(v)
            })
            .collect()
    }

    /// The version `@latest` would answer among the allowed ones: the newest release, else the
    /// newest pre-release.
    async fn newest_allowed(&self, op: Option<&str>) -> Option<String> {
        let list = self.fetch(ProxyOp::List).await.ok().flatten()?;
        let text = String::from_utf8_lossy(&list).into_owned();
        let allowed = self.allowed(text.lines().map(str::trim), op).await;
        newest(allowed.iter().map(String::as_str))
    }

    /// The 403 the go command shows, naming the newest allowed version when there is one.
    async fn refusal(&self, v: &str, d: &Decision) -> ServeError {
        let mut text = d.refusal_text(self.module.as_str(), v);
        match self.newest_allowed(None).await {
            Some(newest) if newest != v => text.push_str(&format!("; newest allowed: {newest}")),
            Some(_) => {}
            None => text.push_str("; no version of this module is allowed"),
        }
        ServeError::ClientForbidden(text)
    }

    /// A GOPROXY answer for this module through the cache: `None` when not found.
    async fn fetch(&self, op: ProxyOp) -> Result<Option<Bytes>, String> {
        fetch_public(self.state, self.module, op).await
    }
}

/// A public module's GOPROXY answer through modgate's cache, as an internal request.
pub async fn fetch_public(
    state: &Arc<State>,
    module: &ModulePath,
    op: ProxyOp,
) -> Result<Option<Bytes>, String> {
    let dynamic = state.live();
    let target = Target::GoProxy {
        module: module.clone(),
        op,
    };
    let Route::Public(f) = route(&target, &Rules::default()) else {
        return Err("not a public GOPROXY request".into());
    };
    let host = dynamic
        .config
        .modules
        .proxy_hosts
        .first()
        .cloned()
        .unwrap_or_default();
    let mut ctx = super::internal_ctx(state, &host, f.upstream_path(), &target);
    ctx.set_route("public", "goproxy");
    super::internal_fetch(state, ctx, Ok(super::public_spec(&f, &dynamic))).await
}
