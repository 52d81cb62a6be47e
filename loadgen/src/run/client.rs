//! The gate side of the wire: TLS identities, QUIC connections, the Hello handshake and one
//! request per bidirectional stream (PROTOCOL.md's stream model).
//!
//! Each simulated gate has its own certificate and so its own `quinn::ClientConfig`, but many
//! gates share one UDP socket (`quinn::Endpoint`): a socket carries any number of
//! connections, and a handful of sockets spreads the packet work over the runtime's threads.
//!
//! A gate reconnects by itself when its connection dies (server restart, idle timeout): the
//! next event finds the connection closed, reconnects under the gate's lock, and retries.
//! Failed connects are not retried sooner than [`RECONNECT_BACKOFF`], so a dead server is not
//! hammered by every waiting event.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gatewarden_protocol::{
    ALPN, DecodeError, ErrorCode, Hello, HelloAck, Message, PROTOCOL_VERSION, capability,
    decode_frame, encode_frame,
};
use quinn::crypto::rustls::QuicClientConfig;
use rustls::RootCertStore;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::population::Gate;

/// Largest reply read from a stream.
pub(crate) const READ_LIMIT: usize = 64 * 1024;
/// Minimum pause between two connection attempts of one gate.
pub(crate) const RECONNECT_BACKOFF: Duration = Duration::from_millis(250);
/// Keep-alive interval of an idle gate connection.
const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// Idle timeout: how long a silent server takes to be declared gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
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

/// Client transport settings: keep-alives well inside the idle timeout, so a quiet gate keeps
/// its connection, and a short idle timeout, because a dead or restarted server is noticed
/// only through it (a restarted server cannot send a valid stateless reset: its reset key is
/// new). The peer's own idle timeout still applies if it is shorter.
pub(crate) fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    // 5 s always fits a VarInt; the fallback keeps quinn's default.
    t.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    Arc::new(t)
}

/// One simulated gate and its connection.
#[derive(Debug)]
pub(crate) struct GateConn {
    pub(crate) gate: Gate,
    config: quinn::ClientConfig,
    endpoint: quinn::Endpoint,
    slot: Mutex<Slot>,
    /// The server's HelloAck of the latest connection (dimension, model, frame limit).
    pub(crate) ack: OnceLock<HelloAck>,
}

#[derive(Debug, Default)]
struct Slot {
    conn: Option<quinn::Connection>,
    last_failure: Option<Instant>,
    connects: u32,
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
    pub(crate) fn new(gate: Gate, config: quinn::ClientConfig, endpoint: quinn::Endpoint) -> Self {
        Self {
            gate,
            config,
            endpoint,
            slot: Mutex::new(Slot::default()),
            ack: OnceLock::new(),
        }
    }

    /// The gate's live connection, connecting (and saying Hello) first if it has none.
    pub(crate) async fn connection(
        &self,
        target: SocketAddr,
        server_name: &str,
        timeout: Duration,
    ) -> Result<(quinn::Connection, Connected), ConnectError> {
        let mut slot = self.slot.lock().await;
        if let Some(conn) = &slot.conn
            && conn.close_reason().is_none()
        {
            return Ok((conn.clone(), Connected::Reused));
        }
        if let Some(at) = slot.last_failure {
            let since = at.elapsed();
            if since < RECONNECT_BACKOFF {
                return Err(ConnectError::Backoff {
                    gate: self.gate.gate,
                    wait: RECONNECT_BACKOFF - since,
                });
            }
        }
        let attempt = self.connect(target, server_name);
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
                slot.last_failure = None;
                slot.connects += 1;
                Ok((
                    conn,
                    if slot.connects == 1 {
                        Connected::First
                    } else {
                        Connected::Again
                    },
                ))
            }
            Err(e) => {
                slot.conn = None;
                slot.last_failure = Some(Instant::now());
                Err(e)
            }
        }
    }

    async fn connect(
        &self,
        target: SocketAddr,
        server_name: &str,
    ) -> Result<(quinn::Connection, HelloAck), ConnectError> {
        let gate = self.gate.gate;
        let conn = self
            .endpoint
            .connect_with(self.config.clone(), target, server_name)
            .map_err(|source| ConnectError::Start { gate, source })?
            .await
            .map_err(|source| ConnectError::Connection { gate, source })?;
        let hello = Message::Hello(Hello {
            min_version: PROTOCOL_VERSION,
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
            other => Err(ConnectError::Unexpected {
                gate,
                kind: format!("{:?}", other.kind()),
            }),
        }
    }

    /// Closes the gate's connection, if any.
    pub(crate) async fn close(&self) {
        if let Some(conn) = self.slot.lock().await.conn.take() {
            conn.close(0u32.into(), b"run finished");
        }
    }
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
/// server's to answer, before it only the gate's backlog.
pub(crate) async fn exchange_tracked(
    conn: &quinn::Connection,
    frame: &[u8],
    opened: &std::sync::atomic::AtomicBool,
) -> Result<Message, ExchangeError> {
    let (send, recv) = conn.open_bi().await?;
    opened.store(true, std::sync::atomic::Ordering::Relaxed);
    request(send, recv, frame).await
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
