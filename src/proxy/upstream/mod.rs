//! Connections to backends: [`connect`](mod@connect) opens them, [`pool`] keeps idle ones for reuse,
//! [`exchange`] sends a request and reads the response head on the request's own task, and
//! `body` streams the response back, returning its connection when done.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::state::BackendShared;
use crate::tls::BackendTls;

mod body;
pub mod connect;
pub mod error;
pub mod exchange;
pub mod pool;

pub use body::{InFlight, UpstreamBody};
pub use connect::{tcp_connect, Conn, Endpoint, Io};
pub use error::{ErrorKind, UpstreamError};
pub use exchange::{
    send, BodyPiece, Exchange, Interim, InterimHead, Outgoing, ReqBody, SendFailure,
};
pub use pool::{ConnPool, IDLE_REUSE};

/// Where and how to reach one backend.
pub struct Target<'a> {
    pub address: &'a str,
    pub socket_addr: Option<SocketAddr>,
    pub shared: &'a Arc<BackendShared>,
    pub connect_timeout: Duration,
    pub tls: Option<&'a Arc<BackendTls>>,
}

/// A ready connection, and whether it was reused from the pool (a reused one may race
/// with the backend closing it).
pub async fn checkout(t: &Target<'_>) -> Result<(Conn, bool), UpstreamError> {
    if let Some(c) = t.shared.conns.take() {
        return Ok((c, true));
    }
    // Boxed: the connect future (with a TLS handshake) is large and rarely needed; kept
    // inline it would grow, and be copied with, every request's future.
    Box::pin(connect(t)).await.map(|c| (c, false))
}

impl Target<'_> {
    fn endpoint(&self) -> Endpoint<'_> {
        Endpoint {
            address: self.address,
            socket_addr: self.socket_addr,
            connect_timeout: self.connect_timeout,
            tls: self.tls,
        }
    }
}

/// A fresh connection, skipping the pool (after a pooled one turned out stale).
pub async fn connect(t: &Target<'_>) -> Result<Conn, UpstreamError> {
    connect::connect(&t.endpoint()).await
}
