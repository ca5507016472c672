//! Blind tunnels: move bytes both ways between the client and the target until either side
//! closes. No TLS termination, nothing inspected. Bytes are counted as they pass, so long-lived
//! and reset tunnels are measured too.
//!
//! When both ends are plain TCP sockets (CONNECT tunnels and gateway-mode splices), bytes move
//! socket to pipe to socket with splice(2) and never enter user space; otherwise, or if a pipe
//! cannot be made, they are copied through 64 KiB buffers.

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

/// Tunnels a CONNECT client (the connection hyper handed over) to `target`.
pub async fn run_upgraded(
    upgraded: hyper::upgrade::Upgraded,
    mut target: TcpStream,
    metrics: Arc<Metrics>,
) {
    use hyper_util::rt::TokioIo;
    use tokio::io::AsyncWriteExt;
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            // Bytes the client sent after the CONNECT head, already read by hyper, go first.
            if !parts.read_buf.is_empty() {
                if target.write_all(&parts.read_buf).await.is_err() {
                    return;
                }
                metrics
                    .tunnel_bytes
                    .with_label_values(&["upstream"])
                    .inc_by(parts.read_buf.len() as u64);
            }
            run_tcp(parts.io.into_inner(), target, metrics).await;
        }
        Err(upgraded) => run(TokioIo::new(upgraded), target, metrics).await,
    }
}

/// Tunnels two TCP sockets, with splice(2) when pipes are available.
pub async fn run_tcp(client: TcpStream, target: TcpStream, metrics: Arc<Metrics>) {
    let pipes = (splice::Pipe::new(), splice::Pipe::new());
    let (Ok(up_pipe), Ok(down_pipe)) = pipes else {
        return run(client, target, metrics).await;
    };
    let _conn = metrics.connection("tunnel");
    let up = metrics.tunnel_bytes.with_label_values(&["upstream"]);
    let down = metrics.tunnel_bytes.with_label_values(&["client"]);
    let res = tokio::try_join!(
        splice::one_way(&client, &target, &up_pipe, &up),
        splice::one_way(&target, &client, &down_pipe, &down),
    );
    match res {
        Ok((up, down)) => tracing::debug!(up, down, "tunnel closed"),
        Err(e) => tracing::debug!(error = %e, "tunnel ended with error"),
    }
}

mod splice {
    use std::io;
    use std::os::fd::{AsFd, OwnedFd};

    use nix::fcntl::{OFlag, SpliceFFlags};
    use prometheus::IntCounter;
    use tokio::io::Interest;
    use tokio::net::TcpStream;

    /// Bytes asked of one splice call; the kernel moves what it has.
    const CHUNK: usize = 1 << 20;

    /// A non-blocking pipe, the kernel-side buffer of one direction.
    pub struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
    }

    impl Pipe {
        pub fn new() -> io::Result<Pipe> {
            let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
            // A larger pipe moves more per call; the default (64 KiB) works too.
            let _ = nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETPIPE_SZ(256 * 1024));
            Ok(Pipe { read, write })
        }
    }

    fn flags() -> SpliceFFlags {
        SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK
    }

    /// Moves bytes from `from` to `to` until `from` ends, then shuts down `to`'s write side.
    pub async fn one_way(
        from: &TcpStream,
        to: &TcpStream,
        pipe: &Pipe,
        counter: &IntCounter,
    ) -> io::Result<u64> {
        let mut total = 0u64;
        loop {
            let n = loop {
                from.readable().await?;
                match from.try_io(Interest::READABLE, || {
                    nix::fcntl::splice(from.as_fd(), None, &pipe.write, None, CHUNK, flags())
                        .map_err(io::Error::from)
                }) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                let _ = nix::sys::socket::shutdown(
                    std::os::fd::AsRawFd::as_raw_fd(to),
                    nix::sys::socket::Shutdown::Write,
                );
                return Ok(total);
            }
            let mut left = n;
            while left > 0 {
                to.writable().await?;
                match to.try_io(Interest::WRITABLE, || {
                    nix::fcntl::splice(&pipe.read, None, to.as_fd(), None, left, flags())
                        .map_err(io::Error::from)
                }) {
                    Ok(m) => left -= m,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
            counter.inc_by(n as u64);
            total += n as u64;
        }
    }
}

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
