//! Pass-through forwarding on a client connection's own upstream connection (issue 23).
//!
//! An intercepted client connection forwards its requests one after another over one upstream
//! HTTP/1.1 connection, which the client connection's task drives itself ([`Lane::drive`]):
//! no pool lookup and no task spawned per request, and no wake-ups between tasks while a
//! response streams through. The upstream connection is taken from an idle pool (or opened)
//! at the first forwarded request, and given back when the client connection closes or has
//! been quiet for a while ([`Lane::park_if_idle`]). A request that finds the lane busy (a
//! concurrent stream of an HTTP/2 client connection) goes through the shared pooled client.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};

use super::upstream::UpstreamIo;
use crate::body::Body;

/// Where a lane's requests go: one scheme and authority.
#[derive(Clone, Debug)]
pub struct Origin {
    /// `scheme://authority`: the idle pool's key.
    key: Arc<str>,
    pub(super) scheme: Scheme,
    pub(super) authority: Authority,
    /// The `Host` header a request to this origin carries.
    pub host: HeaderValue,
}

impl Origin {
    pub fn new(scheme: &Scheme, authority: &Authority) -> Origin {
        Origin {
            key: format!("{scheme}://{authority}").into(),
            scheme: scheme.clone(),
            authority: authority.clone(),
            host: HeaderValue::from_str(authority.as_str())
                .expect("an authority is a valid header value"),
        }
    }

    /// `scheme://authority/`, for the connector.
    pub(super) fn uri(&self) -> Uri {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query("/")
            .build()
            .expect("scheme and authority make a URI")
    }

    pub(super) fn key(&self) -> Arc<str> {
        self.key.clone()
    }

    /// The host name, for error texts.
    pub(super) fn host(&self) -> &str {
        self.authority.host()
    }
}

type Conn = Connection<UpstreamIo, Body>;

/// An upstream connection pinned to a lane.
pub(super) struct Pinned {
    pub origin: Arc<str>,
    pub sender: SendRequest<Body>,
    pub conn: Conn,
    pub pool: Arc<IdlePool>,
}

impl Pinned {
    /// Gives the connection back to the idle pool if it is between requests.
    fn park(self: Box<Self>) {
        if !self.sender.is_ready() {
            return;
        }
        let Pinned {
            origin, conn, pool, ..
        } = *self;
        let parts = conn.into_parts();
        if parts.read_buf.is_empty() {
            pool.put(origin, parts.io);
        }
    }
}

/// One client connection's upstream connection slot. See the module docs.
#[derive(Default)]
pub struct Lane {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    /// Boxed: a connection's state is large and most client connections never forward.
    pinned: Option<Box<Pinned>>,
    /// A request of this lane is opening its connection.
    connecting: bool,
    /// The task that drives the lane.
    waker: Option<Waker>,
}

/// What became of a request offered to the lane.
pub(super) enum Sent {
    /// It went to the pinned connection.
    Done(Result<Response<Incoming>, hyper::Error>),
    /// It was not sent: no usable connection is pinned (none, another origin's, or closed).
    Back(Request<Body>),
    /// It was not sent: the pinned connection is carrying another request.
    Busy(Request<Body>),
}

impl Lane {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drives the pinned upstream connection; never completes. The client connection's task
    /// polls this beside its HTTP server, so the lane's exchanges need no other task.
    pub async fn drive(&self) -> Infallible {
        std::future::poll_fn(|cx| {
            let mut g = self.lock();
            if let Some(p) = g.pinned.as_mut()
                && let Poll::Ready(res) = Pin::new(&mut p.conn).poll(cx)
            {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "pinned upstream connection ended");
                }
                g.pinned = None;
            }
            if !g.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                g.waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// Sends `req` on the pinned connection to `origin`. With `wait`, a connection still
    /// finishing its previous exchange is waited for (an HTTP/1.1 client connection's requests
    /// come one after another); without, it is [`Sent::Busy`].
    pub(super) async fn send(&self, origin: &Origin, req: Request<Body>, wait: bool) -> Sent {
        let mut req = Some(req);
        let sending = std::future::poll_fn(|cx| {
            let mut g = self.lock();
            let Some(p) = g.pinned.as_mut().filter(|p| *p.origin == *origin.key) else {
                return Poll::Ready(None);
            };
            if wait {
                match p.sender.poll_ready(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(_)) => return Poll::Ready(None),
                    Poll::Ready(Ok(())) => {}
                }
            } else if !p.sender.is_ready() {
                return Poll::Ready(Some(None));
            }
            let r = req.take().expect("a request is sent once");
            Poll::Ready(Some(Some(p.sender.try_send_request(r))))
        })
        .await;
        match sending {
            None => Sent::Back(req.take().expect("not sent")),
            Some(None) => Sent::Busy(req.take().expect("not sent")),
            Some(Some(response)) => match response.await {
                Ok(resp) => Sent::Done(Ok(resp)),
                Err(mut e) => match e.take_message() {
                    Some(req) => Sent::Back(req),
                    None => Sent::Done(Err(e.into_error())),
                },
            },
        }
    }

    /// Claims the lane for a request that will open its connection: false when another
    /// request holds it (opening, or with a response in flight).
    pub(super) fn claim(&self) -> bool {
        let old = {
            let mut g = self.lock();
            if g.connecting {
                return false;
            }
            if let Some(p) = &g.pinned
                && !p.sender.is_closed()
                && !p.sender.is_ready()
            {
                return false;
            }
            g.connecting = true;
            g.pinned.take()
        };
        if let Some(p) = old {
            p.park();
        }
        true
    }

    /// Gives up a [`claim`](Self::claim) whose connection could not be opened.
    pub(super) fn unclaim(&self) {
        self.lock().connecting = false;
    }

    /// Pins a connection opened under a claim and wakes the task that drives it.
    pub(super) fn install(&self, p: Pinned) {
        let mut g = self.lock();
        g.connecting = false;
        g.pinned = Some(Box::new(p));
        if let Some(w) = &g.waker {
            w.wake_by_ref();
        }
    }

    /// Gives the pinned connection back to the idle pool if it is between requests, so a
    /// quiet client connection does not hold an upstream connection.
    pub fn park_if_idle(&self) {
        let p = {
            let mut g = self.lock();
            match &g.pinned {
                Some(p) if !g.connecting && p.sender.is_ready() => g.pinned.take(),
                _ => None,
            }
        };
        if let Some(p) = p {
            p.park();
        }
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = inner.pinned.take() {
            p.park();
        }
    }
}

/// Parked connections per origin key, each with the time it was parked.
type Parked = hashbrown::HashMap<Arc<str>, Vec<(UpstreamIo, Instant)>>;

/// Idle upstream connections between lanes, per origin, each at most `idle_timeout` old and
/// checked to be still open when taken.
pub(super) struct IdlePool {
    max_per_origin: usize,
    idle_timeout: Duration,
    idle: Mutex<Parked>,
    sweeping: AtomicBool,
}

impl IdlePool {
    pub fn new(max_per_origin: usize, idle_timeout: Duration) -> Arc<IdlePool> {
        Arc::new(IdlePool {
            max_per_origin,
            idle_timeout,
            idle: Mutex::default(),
            sweeping: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Parked> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently parked open connection to `origin`, if any.
    pub fn take(&self, origin: &Origin) -> Option<UpstreamIo> {
        let mut idle = self.lock();
        let list = idle.get_mut(&*origin.key)?;
        while let Some((mut io, since)) = list.pop() {
            if since.elapsed() < self.idle_timeout && io.is_open() {
                return Some(io);
            }
        }
        None
    }

    fn put(self: &Arc<Self>, origin: Arc<str>, io: UpstreamIo) {
        {
            let mut idle = self.lock();
            let list = idle.entry(origin).or_default();
            list.retain(|(_, since)| since.elapsed() < self.idle_timeout);
            if list.len() >= self.max_per_origin {
                return;
            }
            list.push((io, Instant::now()));
        }
        self.sweep_later();
    }

    /// Closes expired connections now and then, from the first parked one on.
    fn sweep_later(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.sweeping.store(false, Ordering::Relaxed);
            return;
        };
        let pool: Weak<IdlePool> = Arc::downgrade(self);
        let every = (self.idle_timeout / 2).max(Duration::from_secs(1));
        rt.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { return };
                let timeout = pool.idle_timeout;
                pool.lock().retain(|_, list| {
                    list.retain(|(_, since)| since.elapsed() < timeout);
                    !list.is_empty()
                });
            }
        });
    }
}
