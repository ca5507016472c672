//! Classification and routing of arbitrary host, method, path and query: never panics, and a
//! path that classifies as a GOPROXY call always yields a cache key without `..` components.
#![no_main]
use libfuzzer_sys::fuzz_target;
use modgate::config::Config;
use modgate_core::policy::route::Route;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let mut parts = s.splitn(4, '\n');
    let host = parts.next().unwrap_or("proxy.golang.org");
    let method = parts.next().unwrap_or("GET");
    let path = parts.next().unwrap_or("/");
    let query = parts.next();
    let mut cfg = Config::default();
    cfg.modules.private = modgate::config::PatternList(vec!["*.corp.example,github.com/acme/*".into()]);
    let policy = modgate::gateway::compile::policy(&cfg).unwrap();
    for host in [host, "proxy.golang.org", "sum.golang.org"] {
        if let Ok((_, route)) = policy.decide(modgate_core::policy::Entry::Intercepted, host, method, path, query) {
            let key = match &route {
                Route::Public(f) => Some(f.key().to_string()),
                Route::SumDb(f) => Some(f.key().to_string()),
                _ => None,
            };
            if let Some(k) = key {
                assert!(!k.split('/').any(|c| c == ".." || c == "." || c.is_empty()), "{k}");
            }
        }
    }
});
