//! Blind tunnels: copy bytes both ways between the client and the target until either side
//! closes. No TLS termination, nothing inspected. Bytes are counted as they pass, so long-lived
//! and reset tunnels are measured too.
//!
//! Memory follows the traffic, not the tunnel count: a direction waits for its socket to be
//! readable holding no buffer, then borrows a 64 KiB buffer from a small shared pool, copies
//! until the socket has nothing more, and gives the buffer back. An idle tunnel holds no copy
//! buffer at all (tokio's `copy_bidirectional` holds two for the tunnel's whole life: 128 KiB
//! per tunnel, 2.7 GB for 20,000 idle ones), and buffers beyond the pool's cap are freed as
//! traffic falls.
//!
//! splice(2) through a pipe per direction was tried twice: in an interleaved A/B (BENCHMARKS.md,
//! run 9) it moved bytes as fast with about 20% less CPU, but every tunnel would hold two pipes
//! (four more descriptors each), and pipe pages count against `fs.pipe-user-pages-soft`, past
//! which a gateway not running as root gets two-page pipes.

use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use prometheus::IntCounter;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::telemetry::metrics::Metrics;

/// Buffer size for a copy.
const COPY_BUF: usize = 64 * 1024;
/// Buffers kept for reuse when no copy holds them (4 MiB).
const POOL_MAX: usize = 64;

static POOL: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

fn take() -> Box<[u8]> {
    POOL.lock()
        .expect("not poisoned")
        .pop()
        .unwrap_or_else(|| vec![0u8; COPY_BUF].into_boxed_slice())
}

fn give(buf: Box<[u8]>) {
    let mut pool = POOL.lock().expect("not poisoned");
    if pool.len() < POOL_MAX {
        pool.push(buf);
    }
}

/// Copies between `client` and `target` until both directions finish; `early` (bytes the
/// client sent before the tunnel existed, e.g. read along with the CONNECT head) goes to the
/// target first.
pub async fn run(client: TcpStream, early: Bytes, target: TcpStream, metrics: Arc<Metrics>) {
    let _conn = metrics.connection("tunnel");
    let up = metrics.tunnel_bytes.with_label_values(&["upstream"]);
    let down = metrics.tunnel_bytes.with_label_values(&["client"]);
    let (client_r, client_w) = client.into_split();
    let (target_r, mut target_w) = target.into_split();
    if !early.is_empty() {
        if let Err(e) = target_w.write_all(&early).await {
            tracing::debug!(error = %e, "tunnel ended with error");
            return;
        }
        up.inc_by(early.len() as u64);
    }
    // hyper's read buffer (8 KiB) comes with it: not kept for the tunnel's life.
    drop(early);
    let res = tokio::try_join!(
        pipe(client_r, target_w, &up),
        pipe(target_r, client_w, &down)
    );
    match res {
        Ok((up, down)) => tracing::debug!(up, down, "tunnel closed"),
        Err(e) => tracing::debug!(error = %e, "tunnel ended with error"),
    }
}

/// One direction: `from` to `to` until `from` ends, then `to` is shut down (half-close).
async fn pipe(from: OwnedReadHalf, mut to: OwnedWriteHalf, count: &IntCounter) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        from.readable().await?;
        let mut buf = take();
        let step = loop {
            match from.try_read(&mut buf) {
                Ok(0) => break Ok(true),
                Ok(n) => {
                    if let Err(e) = to.write_all(&buf[..n]).await {
                        break Err(e);
                    }
                    count.inc_by(n as u64);
                    total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(false),
                Err(e) => break Err(e),
            }
        };
        give(buf);
        if step? {
            let _ = to.shutdown().await;
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn bytes_cross_both_ways_with_half_close_and_early_bytes_first() {
        let metrics = Arc::new(Metrics::new());
        let target_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (ta, ca) = (
            target_l.local_addr().unwrap(),
            client_l.local_addr().unwrap(),
        );
        // The target echoes everything back, then closes when the client is done writing.
        tokio::spawn(async move {
            let (mut s, _) = target_l.accept().await.unwrap();
            let mut all = vec![];
            s.read_to_end(&mut all).await.unwrap();
            s.write_all(&all).await.unwrap();
        });
        let agent = tokio::spawn(async move {
            let mut s = TcpStream::connect(ca).await.unwrap();
            let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
            s.write_all(&data).await.unwrap();
            s.shutdown().await.unwrap();
            let mut back = vec![];
            s.read_to_end(&mut back).await.unwrap();
            (data, back)
        });
        let (client, _) = client_l.accept().await.unwrap();
        let target = TcpStream::connect(ta).await.unwrap();
        run(
            client,
            Bytes::from_static(b"early:"),
            target,
            metrics.clone(),
        )
        .await;
        let (data, back) = agent.await.unwrap();
        assert_eq!(&back[..6], b"early:");
        assert_eq!(&back[6..], &data[..]);
        let m = metrics.render();
        assert!(
            m.contains("modgate_tunnel_bytes_total{direction=\"upstream\"} 3000006"),
            "{m}"
        );
        assert!(
            m.contains("modgate_tunnel_bytes_total{direction=\"client\"} 3000006"),
            "{m}"
        );
        // Buffers went back to the pool.
        assert!(POOL.lock().unwrap().len() <= POOL_MAX);
    }
}
