//! The gate side of the wire: TLS identities, QUIC connections, the Hello handshake and one
//! request per bidirectional stream (PROTOCOL.md's stream model).
//!
//! Each simulated gate has its own certificate and so its own `quinn::ClientConfig`, but many
//! gates share one UDP socket (`quinn::Endpoint`): a socket carries any number of
//! connections, and a handful of sockets spreads the packet work over the runtime's threads.
//!
//! A gate reconnects by itself when its connection dies (server restart, idle timeout), as
//! PROTOCOL.md's "Reconnecting" asks: after a random pause drawn by [`reconnect_delay`]
//! (full jitter over a window that doubles with every failed attempt), whether a keeper task
//! or a waiting event notices first. Every attempt of a gate goes through its lock and obeys
//! the same pause, so a dead server is not hammered by every waiting event, and a fleet that
//! lost its server at one instant comes back spread out.
//!
//! A gate knows every node of its site (its node list, `--target` given several times). Each
//! attempt after a loss or a failed attempt goes to the next address of the list (a
//! *failover*). A node that does not serve the gate's market answers `Redirect` (PROTOCOL.md,
//! "Markets served elsewhere"): the gate then tries the addresses it names first, after the
//! same kind of pause, and goes back to its list if they fail. A `Redirect` of an event ends
//! that connection for new events; the events still in flight on it get their own answers
//! there, and it closes when the last of them lets go of it.

use std::collections::VecDeque;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gatewarden_protocol::{
    ALPN, DecodeError, ErrorCode, Hello, HelloAck, MIN_PROTOCOL_VERSION, Message, PROTOCOL_VERSION,
    Redirect, capability, decode_frame, encode_frame,
};
use quinn::crypto::rustls::QuicClientConfig;
use rustls::RootCertStore;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;

use crate::population::Gate;

/// Largest reply read from a stream.
pub(crate) const READ_LIMIT: usize = 64 * 1024;
/// The reconnect window before the first attempt after a loss (PROTOCOL.md, "Reconnecting").
pub(crate) const RECONNECT_BASE: Duration = Duration::from_secs(1);
/// The widest reconnect window, however many attempts failed.
pub(crate) const RECONNECT_CAP: Duration = Duration::from_secs(30);
/// How long one connection attempt (QUIC handshake, then `Hello` and its answer) may take
/// before it counts as failed (PROTOCOL.md, "Reconnecting"). A handshake whose packets were
/// lost in a reconnect storm otherwise waits out QUIC's doubling probe timers; measured under
/// a 10,000-gate restart, the last gates were back 21 s after the kill with 10 s, 17 s with 4 s.
/// Ample for a server working through a full queue of handshakes (2,048 at about 800 a
/// second on this 2-core box).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);
/// Idle timeout per keep-alive interval: a few keep-alives may be lost before a silent
/// server is declared gone.
const IDLE_PER_KEEP_ALIVE: u32 = 5;
/// Firmware string the simulated gates announce.
const FIRMWARE: &str = concat!("gatewarden-loadgen/", env!("CARGO_PKG_VERSION"));

/// Why a gate's TLS identity could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// A file is missing or unreadable.
    #[error(
        "{path}: {cause}; make the fleet's certificates with `gatewarden cert --dir DIR --gates N`"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause (in the message, so it is not also a `source`).
        cause: std::io::Error,
    },
    /// A file holds no usable certificate or key.
    #[error("{path}: {what}")]
    Content {
        /// The file.
        path: PathBuf,
        /// What is missing.
        what: String,
    },
    /// rustls refused the configuration.
    #[error("tls configuration for gate {gate}: {what}")]
    Tls {
        /// The gate.
        gate: u32,
        /// rustls's reason.
        what: String,
    },
}

/// Why a gate could not connect or say Hello.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ConnectError {
    #[error("gate {gate}: cannot start a connection: {source}")]
    Start {
        gate: u32,
        source: quinn::ConnectError,
    },
    #[error("gate {gate}: connection failed: {source}")]
    Connection {
        gate: u32,
        source: quinn::ConnectionError,
    },
    #[error("gate {gate}: hello stream failed: {what}")]
    Stream { gate: u32, what: String },
    #[error("gate {gate}: hello refused: {code:?}: {message}")]
    Refused {
        gate: u32,
        code: ErrorCode,
        message: String,
    },
    #[error("gate {gate}: undecodable hello reply: {source}")]
    Decode { gate: u32, source: DecodeError },
    #[error("gate {gate}: unexpected hello reply {kind}")]
    Unexpected { gate: u32, kind: String },
    #[error("gate {gate}: connect timed out after {after:?}")]
    Timeout { gate: u32, after: Duration },
    #[error("gate {gate}: waiting {wait:?} before reconnecting")]
    Backoff { gate: u32, wait: Duration },
    #[error(
        "gate {gate}: redirected to node {node:?} at {addresses:?} (retry after {retry_after_ms} ms)"
    )]
    Redirected {
        gate: u32,
        node: String,
        addresses: Vec<String>,
        retry_after_ms: u32,
    },
}

impl ConnectError {
    /// A short name of the kind of failure, for the report's `connect_attempts_failed`;
    /// `None` for a pause that was not an attempt.
    pub(crate) fn kind(&self) -> Option<&'static str> {
        Some(match self {
            Self::Backoff { .. } => return None,
            Self::Timeout { .. } => "timeout",
            Self::Connection {
                source: quinn::ConnectionError::ConnectionClosed(close),
                ..
            } if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED => "refused",
            Self::Start { .. } | Self::Connection { .. } => "connection",
            Self::Stream { .. } => "stream",
            Self::Redirected { .. } => "redirected",
            Self::Refused { .. } | Self::Decode { .. } | Self::Unexpected { .. } => "hello",
        })
    }
}

/// Why one request got no decodable answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    /// The connection or stream failed: retry (on a new connection if this one is closed).
    #[error("transport: {0}")]
    Transport(String),
    /// The reply is not a frame this version understands.
    #[error("undecodable reply: {0}")]
    Decode(#[from] DecodeError),
}

impl From<quinn::ConnectionError> for ExchangeError {
    fn from(e: quinn::ConnectionError) -> Self {
        Self::Transport(e.to_string())
    }
}

/// A client endpoint (one UDP socket) bound to `bind`, with socket buffers of `buffer_bytes`
/// where the kernel allows (it silently caps them at its maximum).
pub(crate) fn endpoint(bind: SocketAddr, buffer_bytes: usize) -> std::io::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(bind)?;
    let state = quinn::udp::UdpSocketState::new((&socket).into())?;
    // Best effort: a smaller buffer only costs retransmissions under bursts.
    let _ = state.set_recv_buffer_size((&socket).into(), buffer_bytes);
    let _ = state.set_send_buffer_size((&socket).into(), buffer_bytes);
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// The fleet CA, which also signs the server certificate.
pub(crate) fn load_roots(certs: &Path) -> Result<Arc<RootCertStore>, CertError> {
    let path = certs.join("ca.pem");
    let mut roots = RootCertStore::empty();
    let found = read_certs(&path)?;
    for cert in found {
        roots.add(cert).map_err(|e| CertError::Content {
            path: path.clone(),
            what: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let bytes = fs::read(path).map_err(|cause| CertError::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Content {
            path: path.to_path_buf(),
            what: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::Content {
            path: path.to_path_buf(),
            what: "no PEM certificate".into(),
        });
    }
    Ok(certs)
}

/// The QUIC client configuration of gate `gate`: TLS 1.3 only, the ring provider, the fleet
/// CA as the only trust anchor, ALPN `gatewarden/1`, and the gate's certificate
/// (`CERTS/gates/<gate>.pem`, key `CERTS/gates/<gate>.key`) for client authentication.
pub(crate) fn gate_client_config(
    certs: &Path,
    gate: u32,
    roots: &Arc<RootCertStore>,
    transport: &Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, CertError> {
    let cert_path = certs.join("gates").join(format!("{gate}.pem"));
    let key_path = certs.join("gates").join(format!("{gate}.key"));
    let chain = read_certs(&cert_path)?;
    let key_bytes = fs::read(&key_path).map_err(|cause| CertError::Read {
        path: key_path.clone(),
        cause,
    })?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| CertError::Content {
        path: key_path.clone(),
        what: match e {
            pem::Error::NoItemsFound => "no PEM private key".into(),
            other => other.to_string(),
        },
    })?;
    let tls_err = |e: rustls::Error| CertError::Tls {
        gate,
        what: e.to_string(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_root_certificates(Arc::clone(roots))
        .with_client_auth_cert(chain, key)
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| CertError::Tls {
        gate,
        what: e.to_string(),
    })?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::clone(transport));
    Ok(config)
}

/// Client transport settings: keep-alives every `keep_alive`, so a quiet gate keeps its
/// connection and its packets reach a restarted server (gatewarden keeps its stateless-reset
/// key across restarts and answers them with a reset, so the gate learns of the restart
/// within one keep-alive), and an idle timeout of five keep-alives for a server that is
/// silent altogether. The peer's own idle timeout still applies if it is shorter.
pub(crate) fn transport_config(keep_alive: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(keep_alive));
    // A value too large for a VarInt keeps quinn's default.
    t.max_idle_timeout(quinn::IdleTimeout::try_from(keep_alive * IDLE_PER_KEEP_ALIVE).ok());
    Arc::new(t)
}

/// The pause before a gate's next connection attempt, after `failures` failed attempts since
/// its last connection (0 right after losing it): uniform in `[0, min(RECONNECT_CAP,
/// RECONNECT_BASE × 2^failures))`, drawn from a hash of the gate, its attempt and `nonce`
/// (different for every loss). Full jitter: a fleet that lost its server at one instant
/// spreads its first attempts over a whole window, and a window that was too busy doubles.
pub(crate) fn reconnect_delay(failures: u32, gate: u32, nonce: u64) -> Duration {
    let window = RECONNECT_BASE
        .saturating_mul(1u32 << failures.min(16))
        .min(RECONNECT_CAP);
    let mut x = (u64::from(gate) << 32) ^ nonce.rotate_left(17) ^ u64::from(failures);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let unit = ((x ^ (x >> 31)) >> 11) as f64 / (1u64 << 53) as f64;
    window.mul_f64(unit)
}

/// Where a gate dials: a node's address and the name its server certificate must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) name: String,
}

/// One simulated gate and its connection.
#[derive(Debug)]
pub(crate) struct GateConn {
    pub(crate) gate: Gate,
    config: quinn::ClientConfig,
    endpoint: quinn::Endpoint,
    /// The site's nodes, in the order the gate tries them.
    nodes: Arc<[Target]>,
    slot: Mutex<Slot>,
    /// The server's HelloAck of the latest connection (dimension, model, frame limit).
    pub(crate) ack: OnceLock<HelloAck>,
    /// `Redirect` replies this gate received (to a Hello or to an event).
    pub(crate) redirects: AtomicU64,
    /// Attempts this gate made to the next node of its list after a loss or a failed attempt.
    pub(crate) failovers: AtomicU64,
    /// Signalled when the gate leaves a live connection after a `Redirect` of an event, so
    /// that its keeper lets go of it too.
    pub(crate) moved: Notify,
}

#[derive(Debug, Default)]
struct Slot {
    conn: Option<quinn::Connection>,
    /// No attempt before this (the reconnect pause); none while connected.
    retry_at: Option<Instant>,
    /// Failed attempts and redirects since the last connection.
    failures: u32,
    /// Connections lost so far: varies the jitter from one loss to the next.
    losses: u64,
    connects: u32,
    /// The node list's entry of the live connection, or of the next attempt.
    node: usize,
    /// Addresses the last `Redirect` named, tried before the node list.
    redirected: VecDeque<Target>,
}

impl Slot {
    /// Draws the pause before the next attempt, at least `at_least`.
    fn schedule(&mut self, gate: u32, at_least: Duration) {
        let pause = reconnect_delay(self.failures, gate, self.losses).max(at_least);
        self.retry_at = Some(Instant::now() + pause);
    }

    /// Where the next attempt goes: a redirect's address first, else the node list's.
    fn target(&self, nodes: &[Target]) -> Target {
        self.redirected
            .front()
            .cloned()
            .unwrap_or_else(|| nodes[self.node % nodes.len()].clone())
    }

    /// Moves past the target that just failed or was lost: the redirect's next address, or
    /// the node list's next entry. True when that is a failover to another node of the list.
    fn advance(&mut self, nodes: &[Target]) -> bool {
        if self.redirected.pop_front().is_some() {
            return false;
        }
        self.node = (self.node + 1) % nodes.len();
        nodes.len() > 1
    }
}

/// What a connection attempt produced, for the statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Connected {
    /// The live connection was reused.
    Reused,
    /// A first connection.
    First,
    /// A reconnection after the previous connection died.
    Again,
}

impl GateConn {
    /// Gate `gate`, which dials the nodes of `nodes` (at least one) in order.
    pub(crate) fn new(
        gate: Gate,
        config: quinn::ClientConfig,
        endpoint: quinn::Endpoint,
        nodes: Arc<[Target]>,
    ) -> Self {
        assert!(!nodes.is_empty(), "a gate needs at least one node to dial");
        Self {
            gate,
            config,
            endpoint,
            nodes,
            slot: Mutex::new(Slot::default()),
            ack: OnceLock::new(),
            redirects: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            moved: Notify::new(),
        }
    }

    /// The gate's live connection, connecting (and saying Hello) first if it has none.
    pub(crate) async fn connection(
        &self,
        timeout: Duration,
    ) -> Result<(quinn::Connection, Connected), ConnectError> {
        let mut slot = self.slot.lock().await;
        if let Some(conn) = &slot.conn {
            if conn.close_reason().is_none() {
                return Ok((conn.clone(), Connected::Reused));
            }
            // Just lost: the first attempt waits a pause too (PROTOCOL.md, "Reconnecting"),
            // and goes to the next node of the list.
            slot.conn = None;
            slot.losses += 1;
            slot.failures = 0;
            if slot.advance(&self.nodes) {
                self.failovers.fetch_add(1, Ordering::Relaxed);
            }
            slot.schedule(self.gate.gate, Duration::ZERO);
        }
        if let Some(at) = slot.retry_at {
            let now = Instant::now();
            if now < at {
                return Err(ConnectError::Backoff {
                    gate: self.gate.gate,
                    wait: at - now,
                });
            }
        }
        let target = slot.target(&self.nodes);
        let attempt = self.connect(&target);
        let result = match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout {
                gate: self.gate.gate,
                after: timeout,
            }),
        };
        match result {
            Ok((conn, ack)) => {
                // The first ack is kept: every connection of a run talks to the same server
                // configuration, and a change mid-run would be caught by the event replies.
                let _ = self.ack.set(ack);
                slot.conn = Some(conn.clone());
                slot.retry_at = None;
                slot.failures = 0;
                slot.connects += 1;
                slot.redirected.clear();
                // A node reached through a redirect is also in the list (gates know their
                // site): a later loss moves on from there.
                if let Some(i) = self.nodes.iter().position(|n| n.addr == target.addr) {
                    slot.node = i;
                }
                Ok((
                    conn,
                    if slot.connects == 1 {
                        Connected::First
                    } else {
                        Connected::Again
                    },
                ))
            }
            Err(ConnectError::Redirected {
                gate,
                node,
                addresses,
                retry_after_ms,
            }) => {
                slot.conn = None;
                self.follow(&mut slot, &addresses, retry_after_ms).await;
                Err(ConnectError::Redirected {
                    gate,
                    node,
                    addresses,
                    retry_after_ms,
                })
            }
            Err(e) => {
                slot.conn = None;
                slot.failures = slot.failures.saturating_add(1);
                if slot.advance(&self.nodes) {
                    self.failovers.fetch_add(1, Ordering::Relaxed);
                }
                slot.schedule(self.gate.gate, Duration::ZERO);
                Err(e)
            }
        }
    }

    /// Takes a `Redirect` (PROTOCOL.md, "Markets served elsewhere"): the named addresses are
    /// tried next, after a jittered pause of at least `retry_after_ms`; without addresses the
    /// gate waits and asks its node list again, this node first. A redirect counts like a
    /// failed attempt for the pause, so two nodes that name each other cannot make it spin.
    async fn follow(&self, slot: &mut Slot, addresses: &[String], retry_after_ms: u32) {
        self.redirects.fetch_add(1, Ordering::Relaxed);
        slot.redirected = resolve(addresses).await.into();
        slot.schedule(
            self.gate.gate,
            Duration::from_millis(u64::from(retry_after_ms)),
        );
        slot.failures = slot.failures.saturating_add(1);
    }

    /// A `Redirect` answered an event sent on `conn`: no new event goes on that connection.
    /// It is not closed: the events in flight on it get their own answers there (so none is
    /// ever in flight at two nodes), and quinn closes it when its last handle, held by the
    /// last of them, is dropped.
    pub(crate) async fn redirected(&self, conn: &quinn::Connection, redirect: &Redirect) {
        let mut slot = self.slot.lock().await;
        if slot
            .conn
            .as_ref()
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            slot.conn = None;
            self.follow(&mut slot, &redirect.addresses, redirect.retry_after_ms)
                .await;
            // A stored permit if the keeper is not waiting yet: it checks `holds` either way.
            self.moved.notify_one();
        }
    }

    /// True while `conn` is the gate's current connection.
    pub(crate) async fn holds(&self, conn: &quinn::Connection) -> bool {
        self.slot
            .lock()
            .await
            .conn
            .as_ref()
            .is_some_and(|c| c.stable_id() == conn.stable_id())
    }

    async fn connect(
        &self,
        target: &Target,
    ) -> Result<(quinn::Connection, HelloAck), ConnectError> {
        let gate = self.gate.gate;
        let conn = self
            .endpoint
            .connect_with(self.config.clone(), target.addr, &target.name)
            .map_err(|source| ConnectError::Start { gate, source })?
            .await
            .map_err(|source| ConnectError::Connection { gate, source })?;
        let hello = Message::Hello(Hello {
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            gate: gatewarden_protocol::GateId(gate),
            market: gatewarden_protocol::MarketId(self.gate.market),
            firmware: FIRMWARE.into(),
            capabilities: capability::FACE
                | capability::ID_CARD
                | capability::QR
                | capability::THERMOMETER,
        });
        let mut frame = Vec::new();
        encode_frame(&hello, &mut frame);
        let reply = exchange(&conn, &frame).await.map_err(|e| match e {
            ExchangeError::Transport(what) => ConnectError::Stream { gate, what },
            ExchangeError::Decode(source) => ConnectError::Decode { gate, source },
        })?;
        match reply {
            Message::HelloAck(ack) => Ok((conn, ack)),
            Message::Error(e) => {
                conn.close(0u32.into(), b"hello refused");
                Err(ConnectError::Refused {
                    gate,
                    code: e.code,
                    message: e.message,
                })
            }
            Message::Redirect(r) => {
                conn.close(0u32.into(), b"redirected");
                Err(ConnectError::Redirected {
                    gate,
                    node: r.node,
                    addresses: r.addresses,
                    retry_after_ms: r.retry_after_ms,
                })
            }
            other => Err(ConnectError::Unexpected {
                gate,
                kind: format!("{:?}", other.kind()),
            }),
        }
    }

    /// The gate's connection if it has a live one (no attempt is made).
    pub(crate) async fn current(&self) -> Option<quinn::Connection> {
        let slot = self.slot.lock().await;
        slot.conn
            .as_ref()
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    /// Closes the gate's connection, if any.
    pub(crate) async fn close(&self) {
        if let Some(conn) = self.slot.lock().await.conn.take() {
            conn.close(0u32.into(), b"run finished");
        }
    }
}

/// The targets of a redirect's addresses, in order: IP hosts as they are, names resolved
/// (every address they resolve to); the host is the name the node's certificate must carry.
/// Addresses that cannot be used are skipped (a validated `Redirect` has none of those).
async fn resolve(addresses: &[String]) -> Vec<Target> {
    let mut out = Vec::new();
    for address in addresses {
        let Some((host, port)) = Redirect::split_address(address) else {
            continue;
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            out.push(Target {
                addr: SocketAddr::new(ip, port),
                name: host.to_owned(),
            });
        } else if let Ok(found) = tokio::net::lookup_host((host, port)).await {
            out.extend(found.map(|addr| Target {
                addr,
                name: host.to_owned(),
            }));
        }
    }
    out
}

/// One request on a new bidirectional stream: write the frame, finish, read the whole reply.
pub(crate) async fn exchange(
    conn: &quinn::Connection,
    frame: &[u8],
) -> Result<Message, ExchangeError> {
    let (send, recv) = conn.open_bi().await?;
    request(send, recv, frame).await
}

/// Writes the frame on an open stream, finishes it, and reads the whole reply.
async fn request(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    frame: &[u8],
) -> Result<Message, ExchangeError> {
    send.write_all(frame)
        .await
        .map_err(|e| ExchangeError::Transport(e.to_string()))?;
    send.finish()
        .map_err(|e| ExchangeError::Transport(e.to_string()))?;
    let bytes = recv
        .read_to_end(READ_LIMIT)
        .await
        .map_err(|e| ExchangeError::Transport(e.to_string()))?;
    Ok(decode_frame(&bytes)?)
}

/// [`exchange`] that sets `opened` once the stream is open: from then on the request is the
/// server's to answer, before it only the gate's backlog. Also returns when the stream
/// opened: a gate without stream credit (the server withholds it while it sheds) waits in
/// `open_bi`, and that wait is the server telling the gate to hold its request.
pub(crate) async fn exchange_tracked(
    conn: &quinn::Connection,
    frame: &[u8],
    opened: &std::sync::atomic::AtomicBool,
) -> Result<(Message, Instant), ExchangeError> {
    let (send, recv) = conn.open_bi().await?;
    let at = Instant::now();
    opened.store(true, Ordering::Relaxed);
    Ok((request(send, recv, frame).await?, at))
}

/// Like [`exchange`] for bytes the server is expected to refuse: it may stop reading early
/// (an oversize frame) and answer before the write completes, so the write's failure is
/// ignored and the reply is read concurrently.
pub(crate) async fn exchange_raw(
    conn: &quinn::Connection,
    bytes: &[u8],
) -> Result<Message, ExchangeError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let write = async {
        if send.write_all(bytes).await.is_ok() {
            let _ = send.finish();
        }
    };
    let read = recv.read_to_end(READ_LIMIT);
    tokio::pin!(write, read);
    let mut written = false;
    // The reply decides: once it is in, an unfinished write is abandoned.
    let reply = loop {
        tokio::select! {
            r = &mut read => break r,
            () = &mut write, if !written => written = true,
        }
    };
    let bytes = reply.map_err(|e| ExchangeError::Transport(e.to_string()))?;
    Ok(decode_frame(&bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(addr: &str) -> Target {
        Target {
            addr: addr.parse().unwrap(),
            name: "localhost".to_owned(),
        }
    }

    #[test]
    fn a_gate_tries_a_redirect_first_then_fails_over_along_its_node_list() {
        let nodes = [
            target("127.0.0.1:1"),
            target("127.0.0.1:2"),
            target("127.0.0.1:3"),
        ];
        let mut slot = Slot::default();
        assert_eq!(slot.target(&nodes), nodes[0]);
        // A lost node: the next one, counted as a failover.
        assert!(slot.advance(&nodes));
        assert_eq!(slot.target(&nodes), nodes[1]);
        // A redirect is tried first; when it fails the gate is back on its list, where it was.
        slot.redirected = vec![target("10.0.0.9:9")].into();
        assert_eq!(slot.target(&nodes), target("10.0.0.9:9"));
        assert!(!slot.advance(&nodes));
        assert_eq!(slot.target(&nodes), nodes[1]);
        assert!(slot.advance(&nodes));
        assert!(slot.advance(&nodes));
        assert_eq!(slot.target(&nodes), nodes[0], "the list wraps around");
        // A single node is retried, never "failed over" to itself.
        let one = [target("127.0.0.1:1")];
        let mut slot = Slot::default();
        assert!(!slot.advance(&one));
        assert_eq!(slot.target(&one), one[0]);
    }

    #[test]
    fn redirect_addresses_resolve_to_targets_named_by_their_host() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let got = runtime.block_on(resolve(&[
            "127.0.0.1:4434".to_owned(),
            "[::1]:4435".to_owned(),
            "not an address".to_owned(),
        ]));
        assert_eq!(
            got,
            [
                Target {
                    addr: "127.0.0.1:4434".parse().unwrap(),
                    name: "127.0.0.1".to_owned()
                },
                Target {
                    addr: "[::1]:4435".parse().unwrap(),
                    name: "::1".to_owned()
                },
            ]
        );
    }

    #[test]
    fn reconnect_delay_is_full_jitter_over_a_doubling_capped_window() {
        // Within the window for every attempt count, the cap included.
        for failures in [0, 1, 2, 4, 5, 16, 40, u32::MAX] {
            let window = RECONNECT_BASE
                .saturating_mul(1 << failures.min(16))
                .min(RECONNECT_CAP);
            for gate in 0..200 {
                let d = reconnect_delay(failures, gate, 3);
                assert!(d < window, "{failures} {gate}: {d:?} >= {window:?}");
            }
        }
        // A fleet that lost its server at once spreads its first attempts over the whole
        // first window: each tenth of it holds some of 1,000 gates, none holds most.
        let mut tenths = [0u32; 10];
        for gate in 0..1000 {
            let d = reconnect_delay(0, gate, 1);
            tenths[(d.as_secs_f64() / RECONNECT_BASE.as_secs_f64() * 10.0) as usize] += 1;
        }
        assert!(
            tenths.iter().all(|&n| (50..=150).contains(&n)),
            "{tenths:?}"
        );
        // The window doubles: after three failures some pauses exceed the first window.
        assert!((0..100).any(|g| reconnect_delay(3, g, 1) > RECONNECT_BASE * 4));
        // Another loss draws other pauses for the same gate.
        assert!((0..20).any(|g| reconnect_delay(0, g, 1) != reconnect_delay(0, g, 2)));
    }
}
