//! The QUIC front's reading of requests, through the real server: headers are judged before
//! any body is read, the connection's role limits what it may send, and every error in answer
//! to a Hello closes the connection.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gatewarden::server::certs::CertDir;
use gatewarden::server::tls::client_config;
use gatewarden_protocol::{
    ErrorCode, GateId, Hello, MAX_ADMIN_FRAME_LEN, MAX_GATE_FRAME_LEN, MarketId, Message,
    MessageKind, PROTOCOL_VERSION, decode_frame, encode_frame,
};
use quinn::crypto::rustls::QuicClientConfig;

use crate::quic::{Client, hello_message};
use crate::server::{error_code, now, runtime, start, start_with};
use crate::support::verify_event;

/// A connection whose streams the test drives by hand (to leave a request unfinished).
struct RawConnection {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

impl RawConnection {
    async fn open(addr: SocketAddr, certs: &Path, cert: &Path, key: &Path) -> Self {
        let tls = client_config(&CertDir(certs.to_owned()), cert, key).unwrap();
        let quic = QuicClientConfig::try_from(tls).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
        let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
        Self { endpoint, conn }
    }

    async fn gate(addr: SocketAddr, certs: &Path, gate: u32) -> Self {
        let dir = CertDir(certs.to_owned());
        Self::open(
            addr,
            certs,
            &dir.gate_cert(GateId(gate)),
            &dir.gate_key(GateId(gate)),
        )
        .await
    }

    /// Writes `bytes` on a new stream without finishing it and reads the whole reply: the
    /// server must answer from what it has, without waiting for a body or a FIN.
    async fn unfinished(&self, bytes: &[u8]) -> Message {
        let (mut send, mut recv) = self.conn.open_bi().await.unwrap();
        send.write_all(bytes).await.unwrap();
        let reply = recv.read_to_end(1 << 20).await.unwrap();
        decode_frame(&reply).unwrap()
    }

    async fn close(self) {
        self.conn.close(quinn::VarInt::from_u32(0), b"done");
        self.endpoint.wait_idle().await;
    }
}

/// A frame header announcing `len` bytes after the length prefix, of kind `kind`.
fn header(len: u32, kind: u8) -> Vec<u8> {
    let mut h = len.to_le_bytes().to_vec();
    h.push(kind);
    h
}

#[test]
fn headers_are_judged_before_any_body_is_read() {
    runtime().block_on(async {
        let server = start().await;
        let gate = RawConnection::gate(server.addr, &server.certs, 1).await;
        // An event header announcing one byte more than a gate frame may hold, and no body:
        // refused at once, not after the read timeout.
        let over = u32::try_from(MAX_GATE_FRAME_LEN - 4 + 1).unwrap();
        let reply = gate
            .unfinished(&header(over, MessageKind::Event.to_code()))
            .await;
        assert_eq!(error_code(&reply), ErrorCode::FrameTooLarge, "{reply:?}");
        // The same with the whole announced body behind it: the server stops the stream
        // after the header and answers.
        let mut oversize = header(over, MessageKind::Event.to_code());
        oversize.resize(MAX_GATE_FRAME_LEN + 1, 0);
        let reply = gate.whole(&oversize).await;
        assert_eq!(error_code(&reply), ErrorCode::FrameTooLarge, "{reply:?}");
        // An enrolment header of a size an admin may send is still not the gate's to send.
        let reply = gate
            .unfinished(&header(1000, MessageKind::Enroll.to_code()))
            .await;
        assert_eq!(error_code(&reply), ErrorCode::Forbidden, "{reply:?}");
        // A kind only the server sends, and a kind that does not exist.
        let reply = gate
            .unfinished(&header(100, MessageKind::Verdict.to_code()))
            .await;
        assert_eq!(error_code(&reply), ErrorCode::Unexpected, "{reply:?}");
        // Version 2's Redirect is the server's to send too.
        let reply = gate
            .unfinished(&header(100, MessageKind::Redirect.to_code()))
            .await;
        assert_eq!(error_code(&reply), ErrorCode::Unexpected, "{reply:?}");
        let reply = gate.unfinished(&header(100, 99)).await;
        assert_eq!(error_code(&reply), ErrorCode::Malformed, "{reply:?}");
        let reply = gate.unfinished(&header(0, 3)).await;
        assert_eq!(error_code(&reply), ErrorCode::Malformed, "{reply:?}");
        // None of these refusals is a Hello's: the connection still says hello and decides.
        let hello = gate.request_finished(&hello_message(1)).await;
        assert!(matches!(hello, Message::HelloAck(_)), "{hello:?}");
        let verdict = gate
            .request_finished(&Message::Event(verify_event(1, 1, 7, now())))
            .await;
        assert!(matches!(verdict, Message::Verdict(_)), "{verdict:?}");
        gate.close().await;

        // An admin connection sends no Hello: refused from the header, and like every
        // refused Hello it ends the connection.
        let admin = Client::admin(server.addr, &server.certs).await;
        let reply = admin.request(&hello_message(1)).await.unwrap();
        assert_eq!(error_code(&reply), ErrorCode::Forbidden, "{reply:?}");
        tokio::time::timeout(Duration::from_secs(10), admin.closed())
            .await
            .expect("a refused Hello must close the connection");
        server.stop().await;
    });
}

impl RawConnection {
    /// Writes all of `bytes` and FIN, unless the server stops the stream first, and reads
    /// the reply.
    async fn whole(&self, bytes: &[u8]) -> Message {
        let (mut send, mut recv) = self.conn.open_bi().await.unwrap();
        if send.write_all(bytes).await.is_ok() {
            let _ = send.finish();
        }
        decode_frame(&recv.read_to_end(1 << 20).await.unwrap()).unwrap()
    }

    /// One finished request and its reply.
    async fn request_finished(&self, msg: &Message) -> Message {
        let mut bytes = Vec::new();
        encode_frame(msg, &mut bytes);
        let (mut send, mut recv) = self.conn.open_bi().await.unwrap();
        send.write_all(&bytes).await.unwrap();
        send.finish().unwrap();
        decode_frame(&recv.read_to_end(1 << 20).await.unwrap()).unwrap()
    }
}

/// A Hello from gate 1 with the given version range.
fn hello_versions(min_version: u16, max_version: u16) -> Message {
    Message::Hello(Hello {
        min_version,
        max_version,
        gate: GateId(1),
        market: MarketId(1),
        firmware: "test".to_owned(),
        capabilities: 0,
    })
}

#[test]
fn every_error_in_answer_to_a_hello_closes_the_connection() {
    runtime().block_on(async {
        let server = start().await;
        let wait = Duration::from_secs(10);
        // Class 1xx: min_version above max_version (invalid_value), checked before versions
        // are compared.
        let gate = Client::gate(server.addr, &server.certs, 1).await;
        let reply = gate
            .request(&hello_versions(PROTOCOL_VERSION + 1, PROTOCOL_VERSION))
            .await
            .unwrap();
        assert_eq!(error_code(&reply), ErrorCode::InvalidValue, "{reply:?}");
        tokio::time::timeout(wait, gate.closed())
            .await
            .expect("a 1xx answer to a Hello must close the connection");
        // Class 1xx: a Hello frame whose body does not decode.
        let gate = Client::gate(server.addr, &server.certs, 1).await;
        let reply = gate
            .request_raw(&[3, 0, 0, 0, 1, 0xff, 0xff])
            .await
            .unwrap();
        assert_eq!(error_code(&reply), ErrorCode::Malformed, "{reply:?}");
        tokio::time::timeout(wait, gate.closed())
            .await
            .expect("a malformed Hello must close the connection");
        // Class 2xx: no common version.
        let gate = Client::gate(server.addr, &server.certs, 1).await;
        let reply = gate
            .request(&hello_versions(PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 2))
            .await
            .unwrap();
        assert_eq!(
            error_code(&reply),
            ErrorCode::VersionUnsupported,
            "{reply:?}"
        );
        tokio::time::timeout(wait, gate.closed())
            .await
            .expect("version_unsupported must close the connection");
        // A second, valid Hello on a connection that has one is answered like the first; a
        // second Hello that fails closes the connection like a first one.
        let gate = Client::gate(server.addr, &server.certs, 1).await;
        assert!(matches!(gate.hello(1).await, Message::HelloAck(_)));
        assert!(matches!(gate.hello(1).await, Message::HelloAck(_)));
        let reply = gate.request(&hello_message(2)).await.unwrap();
        assert_eq!(error_code(&reply), ErrorCode::GateMismatch, "{reply:?}");
        tokio::time::timeout(wait, gate.closed())
            .await
            .expect("a refused second Hello must close the connection");
        server.stop().await;
    });
}

#[test]
fn a_connection_holds_at_most_two_largest_frames_at_once() {
    runtime().block_on(async {
        // A read timeout far beyond the test, so that only the budget can answer early.
        let server = start_with(|s| s.stream_read_timeout_ms = 600_000).await;
        let dir = CertDir(server.certs.clone());
        let admin = RawConnection::open(
            server.addr,
            &server.certs,
            &dir.admin_cert(),
            &dir.admin_key(),
        )
        .await;
        // Three enrolment headers announcing the largest admin frame, bodies not yet sent.
        let len = u32::try_from(MAX_ADMIN_FRAME_LEN - 4).unwrap();
        let mut sends = Vec::new();
        let mut recvs = Vec::new();
        for _ in 0..3 {
            let (mut send, recv) = admin.conn.open_bi().await.unwrap();
            send.write_all(&header(len, MessageKind::Enroll.to_code()))
                .await
                .unwrap();
            sends.push(send);
            recvs.push(recv);
        }
        // Two fit the 2 MiB budget and wait for their bodies; the third is answered Busy
        // at once. Find it: the only stream with a reply before any body was sent.
        let [r0, r1, r2] = &mut recvs[..] else {
            unreachable!()
        };
        let first = async {
            tokio::select! {
                r = r0.read_to_end(1 << 20) => (r, 0),
                r = r1.read_to_end(1 << 20) => (r, 1),
                r = r2.read_to_end(1 << 20) => (r, 2),
            }
        };
        let (reply, refused) = tokio::time::timeout(Duration::from_secs(60), first)
            .await
            .expect("a frame over the connection's budget must be answered without waiting");
        let busy = decode_frame(&reply.unwrap()).unwrap();
        assert!(matches!(busy, Message::Busy(_)), "{busy:?}");
        // The other two were being read: their bodies (zeros, no valid enrolment) are
        // answered as requests, not as Busy.
        let body = vec![0u8; MAX_ADMIN_FRAME_LEN - 5];
        for (i, (send, recv)) in sends.iter_mut().zip(&mut recvs).enumerate() {
            if i == refused {
                continue;
            }
            send.write_all(&body).await.unwrap();
            send.finish().unwrap();
            let reply = decode_frame(&recv.read_to_end(1 << 20).await.unwrap()).unwrap();
            assert!(matches!(reply, Message::Error(_)), "stream {i}: {reply:?}");
        }
        admin.close().await;
        server.stop().await;
    });
}
