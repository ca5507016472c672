//! Decisions remembered per request path. `classify` and `route` are pure, so under one compiled
//! [`Live`](super::Live) a read of a module proxy or checksum database with the same host and
//! path always gets the same target, route and cache spec. A hit skips path validation, key
//! encoding and spec building: about half of what a cache hit costs modgate itself. Bounded
//! (cleared when full); a reload compiles a new `Live`, and so starts with an empty memo.

use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use modgate_core::policy::classify::Target;
use modgate_core::policy::route::Route;

use super::cached::Spec;

/// Most decisions remembered before the memo starts over.
const MAX_ENTRIES: usize = 16_384;

/// A remembered decision, with the request it is for.
#[derive(Debug)]
pub struct Decided {
    endpoint: bool,
    host: Box<str>,
    path: Box<str>,
    pub target: Target,
    pub route: Route,
    /// The cache spec of a public or checksum-database route.
    pub spec: Option<Arc<Spec>>,
}

/// Where forwarded requests for one intercepted `host:port` go, and their upstream label.
#[derive(Debug)]
pub struct Upstream {
    host: Box<str>,
    port: u16,
    pub base: modgate_core::base_url::BaseUrl,
    /// `base`'s scheme and authority, for the client connection's lane.
    pub origin: crate::egress::lane::Origin,
    pub label: Box<str>,
}

/// The memo of one `Live`.
#[derive(Debug, Default)]
pub struct Memo {
    hasher: hashbrown::DefaultHashBuilder,
    map: Mutex<hashbrown::HashMap<u64, Arc<Decided>>>,
    upstreams: Mutex<hashbrown::HashMap<u64, Arc<Upstream>>>,
}

impl Memo {
    fn key(&self, endpoint: bool, host: &str, path: &str) -> u64 {
        self.hasher.hash_one((endpoint, host, path))
    }

    /// The decision remembered for a GET or HEAD of `path` on `host` (`""` for the endpoint).
    pub fn get(&self, endpoint: bool, host: &str, path: &str) -> Option<Arc<Decided>> {
        let k = self.key(endpoint, host, path);
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&k)
            .filter(|d| d.endpoint == endpoint && &*d.host == host && &*d.path == path)
            .cloned()
    }

    /// The upstream of `host:port` (computed by `make` the first time).
    pub fn upstream<E>(
        &self,
        host: &str,
        port: u16,
        make: impl FnOnce() -> Result<(modgate_core::base_url::BaseUrl, String), E>,
    ) -> Result<Arc<Upstream>, E> {
        let k = self.hasher.hash_one((host, port));
        {
            let map = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(u) = map.get(&k).filter(|u| &*u.host == host && u.port == port) {
                return Ok(u.clone());
            }
        }
        let (base, label) = make()?;
        let u = Arc::new(Upstream {
            host: host.into(),
            port,
            origin: crate::egress::lane::Origin::new(base.scheme(), base.authority()),
            base,
            label: label.into(),
        });
        let mut map = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(k, u.clone());
        Ok(u)
    }

    /// Remembers a decision and returns it.
    pub fn put(
        &self,
        endpoint: bool,
        host: &str,
        path: &str,
        target: Target,
        route: Route,
        spec: Option<Arc<Spec>>,
    ) -> Arc<Decided> {
        let d = Arc::new(Decided {
            endpoint,
            host: host.into(),
            path: path.into(),
            target,
            route,
            spec,
        });
        let k = self.key(endpoint, host, path);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(k, d.clone());
        d
    }
}
