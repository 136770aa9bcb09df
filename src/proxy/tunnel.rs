//! Upgraded connections (WebSockets): the backend connection a 101 leaves, handed to the
//! client's connection, and the bytes copied both ways until either side or shutdown ends it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::upstream::{self, InFlight};

/// What a tunnel needs to close cleanly at the shutdown deadline. It holds `close` for its
/// whole life: shutdown knows the last tunnel has ended when every receiver is gone.
#[derive(Clone)]
pub struct TunnelGuard {
    pub close: tokio::sync::watch::Receiver<bool>,
    pub open: Arc<AtomicU64>,
}

/// An upgraded backend connection, handed to whoever owns the client's socket.
pub struct Tunnel {
    pub backend: upstream::Conn,
    pub in_flight: InFlight,
    pub guard: TunnelGuard,
    pub websocket: bool,
}

/// Copies bytes both ways between an upgraded client and backend until either side closes,
/// or until shutdown closes it: a WebSocket then gets a close frame (1001, going away) on
/// both sides rather than a reset. `client_early` are bytes the client sent after its
/// upgrade request, already read.
pub async fn run_tunnel<C>(mut client: C, client_early: Bytes, t: Tunnel)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let Tunnel {
        backend,
        in_flight,
        guard,
        websocket,
    } = t;
    let _in_flight = in_flight;
    guard.open.fetch_add(1, Ordering::Relaxed);
    let upstream::Conn {
        io: mut backend,
        buf: early,
    } = backend;
    // Bytes the backend sent right after its 101 belong to the client, and the reverse.
    if (!early.is_empty() && client.write_all(&early).await.is_err())
        || (!client_early.is_empty() && backend.write_all(&client_early).await.is_err())
    {
        guard.open.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let mut close = guard.close;
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut backend) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "tunnel closed with an error");
            }
        }
        _ = async { close.wait_for(|c| *c).await.is_ok() } => {
            if websocket {
                // Server→client frames are unmasked; client→server frames must be masked.
                let _ = client.write_all(&[0x88, 0x02, 0x03, 0xE9]).await;
                let mask = fastrand::u32(..).to_be_bytes();
                let payload = [0x03 ^ mask[0], 0xE9 ^ mask[1]];
                let frame = [0x88, 0x82, mask[0], mask[1], mask[2], mask[3], payload[0], payload[1]];
                let _ = backend.write_all(&frame).await;
            }
            let _ = client.shutdown().await;
            let _ = backend.shutdown().await;
        }
    }
    guard.open.fetch_sub(1, Ordering::Relaxed);
}
