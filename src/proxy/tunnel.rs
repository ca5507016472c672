//! Blind tunnels: copy bytes both ways between the client and the target until either side
//! closes. No TLS termination, nothing inspected.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::telemetry::metrics::Metrics;

/// Copies between `client` and `target` until both directions finish; counts bytes.
pub async fn run<C>(mut client: C, mut target: TcpStream, metrics: Arc<Metrics>)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let _conn = metrics.connection("tunnel");
    match tokio::io::copy_bidirectional_with_sizes(&mut client, &mut target, 64 * 1024, 64 * 1024)
        .await
    {
        Ok((up, down)) => {
            metrics
                .tunnel_bytes
                .with_label_values(&["upstream"])
                .inc_by(up);
            metrics
                .tunnel_bytes
                .with_label_values(&["client"])
                .inc_by(down);
            tracing::debug!(up, down, "tunnel closed");
        }
        Err(e) => tracing::debug!(error = %e, "tunnel ended with error"),
    }
}
