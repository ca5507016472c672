//! Gateway mode: connections the network redirected to modgate (iptables/nftables REDIRECT, or
//! TPROXY) from clients with no proxy setting.
//!
//! For each connection: learn the original destination (SO_ORIGINAL_DST after REDIRECT; the
//! local address under TPROXY), refuse it if that is modgate itself, then look at the first
//! bytes. TLS: read the whole ClientHello (kept, never consumed) and decide on its SNI by the
//! same egress policy as CONNECT — intercept with the same CA and handlers, splice to the
//! original destination with the ClientHello replayed, or deny with a TLS alert. Anything else
//! is served as plain HTTP, routed by its Host header.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use tracing::Instrument as _;

use crate::body::Answer;
use crate::body::Body;
use crate::config::{NoSni, TransparentConfig};
use crate::ingress::Ingress as State;
use crate::ingress::io::Prefixed;
use crate::ingress::{mitm, tunnel};
use crate::telemetry::ctx::ConnCtx;
use crate::telemetry::labels::Mode;
use modgate_core::policy::egress::Decision;
use modgate_core::policy::host::normalize_host;

/// The largest ClientHello read before deciding (a hello may span several records).
pub const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// A fatal TLS alert, access_denied: what a refused TLS client sees.
const ALERT_ACCESS_DENIED: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31];

/// Binds the transparent listener, with IP_TRANSPARENT for TPROXY when configured.
pub fn bind(cfg: &TransparentConfig, addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if cfg.tproxy {
        use nix::sys::socket::{setsockopt, sockopt};
        setsockopt(&socket, sockopt::IpTransparent, &true).map_err(std::io::Error::from)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts redirected connections until shutdown. `own` lists modgate's listening addresses,
/// for loop refusal.
pub async fn run(listener: TcpListener, state: Arc<State>, own: Vec<SocketAddr>) {
    let own = Arc::new(own);
    crate::ingress::conn::accept_loop(
        listener,
        state,
        "transparent",
        |stream, peer, state, permit| {
            let own = own.clone();
            async move {
                let _permit = permit;
                serve(stream, peer, state, &own).await
            }
        },
    )
    .await
}

/// The destination the client asked for before the redirect.
pub fn original_destination(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    let local = stream.local_addr()?;
    // Under TPROXY the socket's local address is the original destination, and conntrack
    // (if loaded) agrees; after REDIRECT only SO_ORIGINAL_DST knows it.
    let found = if local.is_ipv4() {
        getsockopt(stream, sockopt::OriginalDst).map(|sa| {
            SocketAddr::from((
                std::net::Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
                u16::from_be(sa.sin_port),
            ))
        })
    } else {
        getsockopt(stream, sockopt::Ip6tOriginalDst).map(|sa| {
            SocketAddr::from((
                std::net::Ipv6Addr::from(sa.sin6_addr.s6_addr),
                u16::from_be(sa.sin6_port),
            ))
        })
    };
    Ok(found.unwrap_or(local))
}

/// Whether `orig` is one of modgate's own listeners: splicing there would loop.
///
/// After REDIRECT, a connection that was not redirected has `orig == local`. Under TPROXY the
/// local address *is* the original destination, so only the listener ports can tell: a
/// destination on one of them is refused unless the listener is bound to another address.
pub fn is_loop(orig: SocketAddr, local: SocketAddr, own: &[SocketAddr], tproxy: bool) -> bool {
    if tproxy {
        return own.iter().any(|l| {
            l.port() == orig.port()
                && (l.ip().is_unspecified() || l.ip() == orig.ip() || orig.ip().is_loopback())
        });
    }
    if orig == local {
        return true;
    }
    let this_host = orig.ip() == local.ip() || orig.ip().is_loopback();
    own.iter()
        .any(|l| l.port() == orig.port() && (this_host || l.ip() == orig.ip()))
}

/// How far the first bytes got.
#[derive(Debug)]
enum Hello {
    /// A complete ClientHello, with its SNI name if any.
    Tls(Option<String>),
    /// Not TLS: serve as plain HTTP.
    Plain,
}

async fn serve(mut stream: TcpStream, peer: SocketAddr, state: Arc<State>, own: &[SocketAddr]) {
    let _guard = state.serve.metrics.connection("transparent");
    let outcome = |o: &str| {
        state
            .serve
            .metrics
            .transparent_connections
            .with_label_values(&[o])
            .inc()
    };
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let orig = match original_destination(&stream) {
        Ok(a) => a,
        Err(_) => return,
    };
    if is_loop(orig, local, own, state.serve.config.transparent.tproxy) {
        outcome("loop");
        tracing::warn!(%peer, %orig, "transparent connection to modgate itself refused (loop)");
        return;
    }
    let timeout = state.serve.config.intercept.tls_handshake_timeout;
    let mut buf = BytesMut::with_capacity(4096);
    let hello = match tokio::time::timeout(timeout, read_hello(&mut stream, &mut buf)).await {
        Ok(Ok(h)) => h,
        Ok(Err(reason)) => {
            outcome("bad_client_hello");
            tracing::info!(%peer, %orig, reason, "transparent connection refused");
            let _ = stream.write_all(&ALERT_ACCESS_DENIED).await;
            return;
        }
        Err(_) => {
            outcome("timeout");
            state
                .serve
                .metrics
                .limit_hits
                .with_label_values(&["tls_handshake_timeout"])
                .inc();
            tracing::info!(%peer, %orig, "transparent connection sent no ClientHello in time");
            return;
        }
    };
    let prefix = buf.freeze();
    let sni = match hello {
        Hello::Plain => {
            outcome("http");
            return serve_plain(Prefixed::new(prefix, stream), peer, orig, state).await;
        }
        Hello::Tls(sni) => sni,
    };
    let dynamic = state.serve.live();
    let decision = state.serve.counted(match &sni {
        Some(host) => dynamic.policy.egress.decide_connect(host),
        None => match state.serve.config.transparent.no_sni {
            NoSni::Tunnel => Decision::Tunnel,
            NoSni::Deny => Decision::Deny(format!(
                "modgate: TLS to {orig} without a server name (SNI) is not allowed"
            )),
        },
    });
    match decision {
        Decision::Deny(reason) => {
            outcome("deny");
            tracing::info!(%peer, %orig, sni = sni.as_deref(), reason, "transparent connection denied");
            let _ = stream.write_all(&ALERT_ACCESS_DENIED).await;
        }
        Decision::Intercept => {
            outcome("intercept");
            let host = sni.expect("only a named host is intercepted");
            let conn = ConnCtx::new(peer, Mode::Transparent, host, orig.port());
            let span = conn.span.clone();
            mitm::serve(Prefixed::new(prefix, stream), conn, state)
                .instrument(span)
                .await;
        }
        Decision::Tunnel => {
            if let Err(r) = state.serve.check_addr(&dynamic, orig) {
                outcome("deny");
                tracing::info!(%peer, %orig, sni = sni.as_deref(), rule = r.rule(), "transparent splice refused by address");
                let _ = stream.write_all(&ALERT_ACCESS_DENIED).await;
                return;
            }
            if let Some(host) = &sni
                && state.serve.config.transparent.verify_destination
                && !resolves_to(host, orig).await
            {
                outcome("deny");
                tracing::info!(%peer, %orig, sni = %host, "transparent splice refused: destination is not an address of the SNI name");
                let _ = stream.write_all(&ALERT_ACCESS_DENIED).await;
                return;
            }
            let connect = tokio::time::timeout(
                state.serve.config.upstream.connect_timeout,
                TcpStream::connect(orig),
            )
            .await;
            let target = match connect {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    outcome("connect_failed");
                    tracing::info!(%peer, %orig, error = %e, "transparent splice: cannot connect");
                    return;
                }
                Err(_) => {
                    outcome("connect_failed");
                    tracing::info!(%peer, %orig, "transparent splice: connect timed out");
                    return;
                }
            };
            let _ = target.set_nodelay(true);
            outcome("splice");
            // The ClientHello already read goes first (and its buffer is not kept after).
            tunnel::run(stream, prefix, target, state.serve.metrics.clone()).await;
        }
    }
}

/// Whether `host` resolves (from here) to `orig`'s address.
async fn resolves_to(host: &str, orig: SocketAddr) -> bool {
    match tokio::net::lookup_host((host, orig.port())).await {
        Ok(mut addrs) => addrs.any(|a| a.ip() == orig.ip()),
        Err(_) => false,
    }
}

/// Reads until a whole ClientHello is in `buf` (or the first bytes show plain text). Every byte
/// read stays in `buf`, to be replayed. The error is a bounded reason.
///
/// However the bytes arrive (one 25 KB burst or many small segments), they are fed to rustls a
/// record at a time: its `Acceptor` holds at most one record's worth, and each is processed
/// (`accept`) before more is given to it.
async fn read_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Hello, &'static str> {
    let mut acceptor = rustls::server::Acceptor::default();
    loop {
        let start = buf.len();
        if start >= MAX_CLIENT_HELLO {
            return Err("client_hello_too_large");
        }
        buf.reserve(4096);
        let n = stream.read_buf(buf).await.map_err(|_| "read_error")?;
        if n == 0 {
            return Err("closed_before_hello");
        }
        if buf[0] != 0x16 {
            return Ok(Hello::Plain);
        }
        let mut fresh = &buf[start..];
        while !fresh.is_empty() {
            let took = acceptor
                .read_tls(&mut fresh)
                .map_err(|_| "bad_client_hello")?;
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    return Ok(Hello::Tls(
                        accepted.client_hello().server_name().map(normalize_host),
                    ));
                }
                Ok(None) if took > 0 => {}
                // Nothing taken and nothing to process: not a TLS stream rustls can read.
                Ok(None) => return Err("bad_client_hello"),
                Err(_) => return Err("bad_client_hello"),
            }
        }
    }
}

/// Plain HTTP on a redirected port: each request is forwarded by its Host header, by the same
/// policy as an absolute-form request from a proxy client.
async fn serve_plain(
    io: Prefixed<TcpStream>,
    peer: SocketAddr,
    orig: SocketAddr,
    state: Arc<State>,
) {
    let svc_state = state.clone();
    // Boxed: hyper keeps a slot the size of the service's future for every connection.
    let svc = service_fn(move |req| Box::pin(plain_request(req, peer, orig, svc_state.clone())));
    let conn = crate::ingress::conn::http1_builder(&state).serve_connection(TokioIo::new(io), svc);
    if let Err(e) = state.watch(conn).await {
        crate::ingress::conn::count_conn_error(&state, &e);
    }
}

async fn plain_request(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    orig: SocketAddr,
    state: Arc<State>,
) -> Result<Response<Body>, Infallible> {
    let Some(authority) = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
    else {
        return Ok(Answer::new(
            StatusCode::BAD_REQUEST,
            "modgate: a request redirected to the gateway needs a valid Host header",
        )
        .into_response());
    };
    let authority = match authority.port_u16() {
        Some(_) => authority.to_string(),
        None if orig.port() == 80 => authority.host().to_string(),
        None => format!("{}:{}", authority.host(), orig.port()),
    };
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    match format!("http://{authority}{path}").parse() {
        Ok(uri) => *req.uri_mut() = uri,
        Err(_) => {
            return Ok(
                Answer::new(StatusCode::BAD_REQUEST, "modgate: invalid request target")
                    .into_response(),
            );
        }
    }
    Ok(
        crate::serve::forward::plain_http(req, peer, None, state.serve.clone(), Mode::Transparent)
            .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loops_are_connections_to_modgates_own_listeners() {
        let own = [a("0.0.0.0:3129"), a("127.0.0.1:3128"), a("127.0.0.1:9090")];
        let local = a("10.0.0.1:3129");
        // Not redirected at all: the original destination is the listener itself.
        assert!(is_loop(local, local, &own, false));
        // Redirected towards one of modgate's own ports on this host.
        assert!(is_loop(a("10.0.0.1:3128"), local, &own, false));
        assert!(is_loop(a("127.0.0.1:9090"), local, &own, false));
        // Ordinary redirected traffic.
        assert!(!is_loop(a("93.184.216.34:443"), local, &own, false));
        assert!(!is_loop(a("10.0.0.1:443"), local, &own, false));
        assert!(!is_loop(a("10.0.0.2:3128"), local, &own, false));
    }

    #[test]
    fn under_tproxy_the_local_address_is_the_destination() {
        let own = [a("0.0.0.0:3129"), a("127.0.0.1:3128")];
        let dest = a("93.184.216.34:443");
        assert!(!is_loop(dest, dest, &own, true), "ordinary TPROXY traffic");
        let direct = a("10.0.0.1:3129");
        assert!(
            is_loop(direct, direct, &own, true),
            "straight to the listener"
        );
        assert!(is_loop(
            a("127.0.0.1:3128"),
            a("127.0.0.1:3128"),
            &own,
            true
        ));
    }

    /// A ClientHello of `alpn_bytes` of ALPN names (about that large), as a real client sends it.
    fn large_client_hello(sni: &str, alpn_bytes: usize) -> Vec<u8> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(crate::tls::tls_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        cfg.alpn_protocols = (0..alpn_bytes / 200)
            .map(|i| format!("{i:0200}").into_bytes())
            .collect();
        let mut conn = rustls::ClientConnection::new(
            std::sync::Arc::new(cfg),
            sni.to_string().try_into().unwrap(),
        )
        .unwrap();
        let mut out = vec![];
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    #[tokio::test]
    async fn a_large_client_hello_is_read_in_one_burst_or_in_pieces() {
        use tokio::io::AsyncWriteExt as _;
        let hello = large_client_hello("proxy.golang.org", 25_000);
        assert!(hello.len() > 20_000, "{}", hello.len());
        for piece in [hello.len(), 1000, 7, 1] {
            let (mut client, mut server) = tokio::io::duplex(128 * 1024);
            let bytes = hello.clone();
            let writer = tokio::spawn(async move {
                for chunk in bytes.chunks(piece) {
                    client.write_all(chunk).await.unwrap();
                }
                client
            });
            let mut buf = BytesMut::new();
            let got = read_hello(&mut server, &mut buf).await;
            assert!(
                matches!(&got, Ok(Hello::Tls(Some(sni))) if sni == "proxy.golang.org"),
                "pieces of {piece}: {got:?}"
            );
            assert_eq!(&buf[..], &hello[..], "every byte kept for the replay");
            drop(writer.await.unwrap());
        }
    }
}
