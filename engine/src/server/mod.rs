//! The QUIC front (quinn 0.11, tokio, rustls with ring): accepts gate connections, checks
//! their certificates, and translates streams to [`Engine::submit`]. It holds no business
//! logic, like quinn relative to quinn-proto.
//!
//! Backpressure: each connection may have at most `max_streams_per_gate` streams open, so a
//! gate cannot queue without bound; beyond that the engine answers `Busy`. While the engine
//! sheds, refusals happen below the request: from the frame header, and by withholding a
//! refused gate's stream credit (conn.rs). Handshakes beyond `max_handshakes` at once are
//! refused with one packet (CONNECTION_REFUSED), so a reconnect storm queues in the gates'
//! back-off rather than in half-finished handshakes; from half that many on, an address not
//! yet validated gets a QUIC Retry first, so only sources that receive the server's packets
//! hold handshake slots (forged Initials cannot lock the gates out). The stateless-reset key is derived from
//! the server's private key, so it survives a restart: a gate's first packet to a restarted
//! server is answered with a stateless reset and the gate reconnects at once, instead of
//! waiting for its idle timeout. Which markets this node serves is the business of a
//! [`MarketDirectory`] ([`Server::with_markets`]; by default [`SingleNode`], every market):
//! a gate of another node's market is answered with a `Redirect` (PROTOCOL.md, "Markets served
//! elsewhere"). Shutdown stops
//! accepting connections, lets open streams finish (up to `shutdown_grace_ms`), drains the
//! engine, and closes the endpoint.

pub mod certs;
mod conn;
mod log_text;
mod reset;
mod tickets;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use serde::Serialize;

use crate::Engine;
use crate::cluster::{MarketDirectory, SingleNode};
use crate::config::ServerConfig;
use certs::CertDir;

/// Server counters.
#[derive(Debug, Default)]
pub struct ServerStats {
    connections: AtomicUsize,
    streams_in_flight: AtomicUsize,
    malformed: AtomicU64,
    gate_mismatch: AtomicU64,
    handshakes_in_flight: AtomicUsize,
    handshakes_refused: AtomicU64,
    handshakes_retried: AtomicU64,
    redirected: AtomicU64,
}

/// A copy of the server counters.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ServerStatsSnapshot {
    /// Open connections (gates and admins).
    pub connections: usize,
    /// Streams being served.
    pub streams_in_flight: usize,
    /// Requests that failed to decode.
    pub malformed: u64,
    /// Events refused because they named another gate.
    pub gate_mismatch: u64,
    /// Handshakes refused because `max_handshakes` were already in progress.
    pub handshakes_refused: u64,
    /// Handshakes from an address not yet validated that were answered with a QUIC Retry
    /// (the address must prove it receives the server's packets) because at least half of
    /// `max_handshakes` were in progress.
    pub handshakes_retried: u64,
    /// Hellos and events answered with a `Redirect` (or, to version-1 gates,
    /// `shutting_down`) because another node serves the gate's market, or none does.
    pub redirected: u64,
}

impl ServerStats {
    /// A point-in-time copy.
    pub fn snapshot(&self) -> ServerStatsSnapshot {
        ServerStatsSnapshot {
            connections: self.connections.load(Ordering::Relaxed),
            streams_in_flight: self.streams_in_flight.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            gate_mismatch: self.gate_mismatch.load(Ordering::Relaxed),
            handshakes_refused: self.handshakes_refused.load(Ordering::Relaxed),
            handshakes_retried: self.handshakes_retried.load(Ordering::Relaxed),
            redirected: self.redirected.load(Ordering::Relaxed),
        }
    }
}

/// What every connection task shares.
#[derive(Clone)]
struct Ctx {
    engine: Arc<Engine>,
    stats: Arc<ServerStats>,
    read_timeout: Duration,
    /// `max_streams_per_gate`: a connection's stream credit when the engine is not shedding.
    max_streams: u32,
    /// `shed_below_requests`: refuse from the header and withhold credit while shedding.
    shed_below: bool,
    /// Which node serves which market.
    markets: Arc<dyn MarketDirectory>,
}

/// A bound QUIC endpoint in front of an engine.
pub struct Server {
    endpoint: quinn::Endpoint,
    ctx: Arc<Ctx>,
    grace: Duration,
    max_handshakes: usize,
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Certificates are missing or invalid.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The TLS configuration lacks a QUIC-capable cipher suite.
    #[error("tls configuration unusable for QUIC: {0}")]
    Quic(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A transport setting is out of range.
    #[error("invalid transport setting: {0}")]
    Transport(String),
}

impl Server {
    /// Binds the endpoint. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// Missing certificates, an unusable address, or invalid transport settings.
    pub fn bind(
        engine: Arc<Engine>,
        config: &ServerConfig,
        certs: &CertDir,
    ) -> Result<Self, ServerError> {
        let tls = tls::server_config(certs)?;
        let crypto =
            QuicServerConfig::try_from(tls).map_err(|e| ServerError::Quic(e.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server_config.transport_config(Arc::new(transport(config)?));
        let socket = udp_socket(config.listen, config.udp_buffer_bytes).map_err(|source| {
            ServerError::Bind {
                addr: config.listen,
                source,
            }
        })?;
        let endpoint = quinn::Endpoint::new(
            reset::endpoint_config_from(&certs.server_key()).map_err(|e| {
                ServerError::Tls(tls::TlsError::Pem {
                    path: certs.server_key().display().to_string(),
                    reason: e.to_string(),
                })
            })?,
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        Ok(Self {
            endpoint,
            ctx: Arc::new(Ctx {
                engine,
                stats: Arc::default(),
                read_timeout: Duration::from_millis(config.stream_read_timeout_ms),
                max_streams: config.max_streams_per_gate,
                shed_below: config.shed_below_requests,
                markets: Arc::new(SingleNode),
            }),
            grace: Duration::from_millis(config.shutdown_grace_ms),
            max_handshakes: config.max_handshakes.max(1),
        })
    }

    /// Serves only the markets `markets` says are served here, and sends the gates of every
    /// other market where it says (PROTOCOL.md, "Markets served elsewhere"). Call before
    /// [`run`](Self::run); without it the server serves every market ([`SingleNode`]).
    #[must_use]
    pub fn with_markets(self, markets: Arc<dyn MarketDirectory>) -> Self {
        let Ctx {
            engine,
            stats,
            read_timeout,
            max_streams,
            shed_below,
            markets: _,
        } = Arc::unwrap_or_clone(self.ctx);
        Self {
            ctx: Arc::new(Ctx {
                engine,
                stats,
                read_timeout,
                max_streams,
                shed_below,
                markets,
            }),
            ..self
        }
    }

    /// The bound address (useful with port 0).
    ///
    /// # Errors
    /// The socket's address cannot be read.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The server's counters.
    pub fn stats(&self) -> Arc<ServerStats> {
        Arc::clone(&self.ctx.stats)
    }

    /// Serves until `shutdown` completes, then drains and closes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let accept = async {
            while let Some(incoming) = self.endpoint.accept().await {
                let stats = &self.ctx.stats;
                let in_flight = stats.handshakes_in_flight.load(Ordering::Relaxed);
                if in_flight >= self.max_handshakes.div_ceil(2)
                    && !incoming.remote_address_validated()
                {
                    // Under pressure a handshake slot goes only to an address that proved it
                    // receives our packets. A Retry costs one packet and keeps no state; a
                    // spoofed source never answers it, so forged Initials cannot fill the
                    // slots and lock real gates out. A real gate pays one round trip.
                    stats.handshakes_retried.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = incoming.retry() {
                        e.into_incoming().refuse();
                    }
                    continue;
                }
                if in_flight >= self.max_handshakes {
                    // One packet now instead of a handshake that would only slow the others:
                    // the gate backs off (PROTOCOL.md, "Reconnecting") and comes back.
                    stats.handshakes_refused.fetch_add(1, Ordering::Relaxed);
                    incoming.refuse();
                    continue;
                }
                stats.handshakes_in_flight.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(conn::serve(incoming, Arc::clone(&self.ctx)));
            }
        };
        tokio::select! {
            () = accept => {}
            () = shutdown => {}
        }
        self.drain().await;
    }

    async fn drain(self) {
        tracing::info!("shutting down: no new connections, finishing open requests");
        self.endpoint.set_server_config(None);
        self.wait_for_streams(self.grace).await;
        // Whatever is still queued is decided and recorded; requests arriving from now on are
        // answered ShuttingDown at once.
        let engine = Arc::clone(&self.ctx.engine);
        let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
        // Let the replies of the drained events reach their gates before closing.
        self.wait_for_streams(Duration::from_secs(2)).await;
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"server shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        tracing::info!("shutdown complete");
    }

    async fn wait_for_streams(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.ctx.stats.streams_in_flight.load(Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Flow-control windows: a stream never needs more than the largest frame, and what a
/// connection's peer may send ahead of the server's reads is bounded, so quinn's buffers
/// per connection are bounded as well as the server's own ([`conn::BODY_BUDGET`]).
const STREAM_RECEIVE_WINDOW: u32 = gatewarden_protocol::MAX_FRAME_LEN as u32;
/// Connection-wide receive window (see [`STREAM_RECEIVE_WINDOW`]).
const CONNECTION_RECEIVE_WINDOW: u32 = conn::BODY_BUDGET as u32;

fn transport(config: &ServerConfig) -> Result<quinn::TransportConfig, ServerError> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(config.max_streams_per_gate));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.stream_receive_window(quinn::VarInt::from_u32(STREAM_RECEIVE_WINDOW));
    t.receive_window(quinn::VarInt::from_u32(CONNECTION_RECEIVE_WINDOW));
    t.keep_alive_interval(Some(Duration::from_millis(config.keep_alive_ms)));
    let idle = quinn::IdleTimeout::try_from(Duration::from_millis(config.idle_timeout_ms))
        .map_err(|e| ServerError::Transport(format!("idle_timeout_ms: {e}")))?;
    t.max_idle_timeout(Some(idle));
    Ok(t)
}

/// A UDP socket with the configured buffer sizes (a rush of a thousand gates overflows the
/// kernel's small default receive buffer).
fn udp_socket(addr: SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    // The kernel may cap these (net.core.rmem_max); a smaller buffer still works.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}
