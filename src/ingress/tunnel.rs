//! Blind tunnels: copy bytes both ways between the client and the target until either side
//! closes. No TLS termination, nothing inspected. Bytes are counted as they pass, so long-lived
//! and reset tunnels are measured too.
//!
//! Bytes are copied through 64 KiB buffers. splice(2) through a pipe per direction was tried
//! twice: in an interleaved A/B (BENCHMARKS.md, run 9) it moved bytes as fast with about 20%
//! less CPU, but every tunnel would hold two pipes (four more descriptors each), and pipe pages
//! count against `fs.pipe-user-pages-soft`, past which a gateway not running as root gets
//! two-page pipes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::telemetry::metrics::Metrics;

/// Buffer size for each direction of a tunnel.
const COPY_BUF: usize = 64 * 1024;

/// Copies between `client` and `target` until both directions finish.
pub async fn run<C>(client: C, mut target: TcpStream, metrics: Arc<Metrics>)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let _conn = metrics.connection("tunnel");
    let mut client = Counted {
        inner: client,
        read: metrics.tunnel_bytes.with_label_values(&["upstream"]),
        written: metrics.tunnel_bytes.with_label_values(&["client"]),
    };
    match tokio::io::copy_bidirectional_with_sizes(&mut client, &mut target, COPY_BUF, COPY_BUF)
        .await
    {
        Ok((up, down)) => tracing::debug!(up, down, "tunnel closed"),
        Err(e) => tracing::debug!(error = %e, "tunnel ended with error"),
    }
}

/// Counts bytes read from (`read`) and written to (`written`) the client side.
struct Counted<IO> {
    inner: IO,
    read: IntCounter,
    written: IntCounter,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.inc_by(n as u64);
        }
        res
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            self.written.inc_by(n as u64);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
