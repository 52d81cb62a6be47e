//! A minimal gate client over real QUIC with mutual TLS, written against PROTOCOL.md's stream
//! model: the first stream carries Hello; then one stream per request.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use gatewarden::server::certs::CertDir;
use gatewarden::server::tls::client_config;
use gatewarden_protocol::{
    GateId, Hello, MarketId, Message, PROTOCOL_VERSION, decode_frame, encode_frame,
};
use quinn::crypto::rustls::QuicClientConfig;

/// A Hello from `gate` in market 1.
pub(crate) fn hello_message(gate: u32) -> Message {
    Message::Hello(Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        gate: GateId(gate),
        market: MarketId(1),
        firmware: "test".to_owned(),
        capabilities: 0,
    })
}

/// One connection, authenticated by a certificate from the folder.
pub(crate) struct Client {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

impl Client {
    /// Connects with `cert`/`key` (paths inside `certs`).
    pub(crate) async fn connect(
        addr: SocketAddr,
        certs: &Path,
        cert: &Path,
        key: &Path,
    ) -> Result<Self, String> {
        let dir = CertDir(certs.to_owned());
        let tls = client_config(&dir, cert, key).map_err(|e| e.to_string())?;
        let quic = QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
        let conn = endpoint
            .connect(addr, "localhost")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self { endpoint, conn })
    }

    /// Connects as gate `gate` with its own certificate.
    pub(crate) async fn gate(addr: SocketAddr, certs: &Path, gate: u32) -> Self {
        let dir = CertDir(certs.to_owned());
        Self::connect(
            addr,
            certs,
            &dir.gate_cert(GateId(gate)),
            &dir.gate_key(GateId(gate)),
        )
        .await
        .unwrap()
    }

    /// Connects with the admin certificate.
    pub(crate) async fn admin(addr: SocketAddr, certs: &Path) -> Self {
        let dir = CertDir(certs.to_owned());
        Self::connect(addr, certs, &dir.admin_cert(), &dir.admin_key())
            .await
            .unwrap()
    }

    /// Says hello as `gate` in market 1.
    pub(crate) async fn hello(&self, gate: u32) -> Message {
        self.request(&hello_message(gate)).await.unwrap()
    }

    /// Sends one message on its own stream and reads the one reply.
    pub(crate) async fn request(&self, msg: &Message) -> Result<Message, String> {
        let mut buf = Vec::new();
        encode_frame(msg, &mut buf);
        self.request_raw(&buf).await
    }

    /// Sends raw bytes as one request and decodes the reply.
    pub(crate) async fn request_raw(&self, bytes: &[u8]) -> Result<Message, String> {
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(bytes).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let reply = recv.read_to_end(1 << 20).await.map_err(|e| e.to_string())?;
        decode_frame(&reply).map_err(|e| e.to_string())
    }

    /// Waits until the server closes the connection; how it was closed.
    pub(crate) async fn closed(&self) -> quinn::ConnectionError {
        self.conn.closed().await
    }

    pub(crate) async fn close(self) {
        self.conn.close(quinn::VarInt::from_u32(0), b"done");
        self.endpoint.wait_idle().await;
    }
}
