//! The QUIC front over loopback with mutual TLS: identity rules, admin rules, bad input.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gatewarden::clock::{Clock, SystemClock};
use gatewarden::cluster::MarketDirectory;
use gatewarden::config::ServerConfig;
use gatewarden::server::Server;
use gatewarden::server::certs::{CertDir, ensure_dev_certs};
use gatewarden_protocol::{
    Decision, ErrorCode, GateId, Message, Revoke, SubjectId, UnixMillis, encode_frame,
};
use tokio::sync::oneshot;

use crate::quic::{Client, hello_message};
use crate::support::{self, identify_event, probe_of, verify_event};

pub(crate) fn now() -> UnixMillis {
    SystemClock.now()
}

/// A populated engine behind a server on 127.0.0.1:0, with certificates for gates 1..=4 and
/// gate 99 (which is not registered).
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    pub(crate) certs: PathBuf,
    /// The server's counters.
    pub(crate) stats: Arc<gatewarden::server::ServerStats>,
    /// The engine behind it (its registry can be changed under the server).
    pub(crate) engine: Arc<gatewarden::Engine>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

pub(crate) async fn start() -> Running {
    start_with(|_| {}).await
}

/// [`start`] with the server settings adjusted by `adjust`.
pub(crate) async fn start_with(adjust: impl FnOnce(&mut ServerConfig)) -> Running {
    start_full(adjust, None).await
}

/// [`start`] serving the markets `markets` says are served here.
pub(crate) async fn start_with_markets(markets: Arc<dyn MarketDirectory>) -> Running {
    start_full(|_| {}, Some(markets)).await
}

async fn start_full(
    adjust: impl FnOnce(&mut ServerConfig),
    markets: Option<Arc<dyn MarketDirectory>>,
) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    ensure_dev_certs(&CertDir(certs.clone()), (1..=4).chain([99]).map(GateId)).unwrap();
    let engine = Arc::new(support::open_populated(dir.path(), now()));
    let mut config = support::config();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    adjust(&mut config.server);
    let mut server =
        Server::bind(Arc::clone(&engine), &config.server, &CertDir(certs.clone())).unwrap();
    if let Some(markets) = markets {
        server = server.with_markets(markets);
    }
    let addr = server.local_addr().unwrap();
    let stats = server.stats();
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        certs,
        stats,
        engine,
        stop: Some(stop),
        task,
        _dir: dir,
    }
}

impl Running {
    pub(crate) async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        self.task.await.unwrap();
    }
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub(crate) fn error_code(msg: &Message) -> ErrorCode {
    match msg {
        Message::Error(e) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn a_gate_gets_verdicts_over_quic() {
    runtime().block_on(async {
        let server = start().await;
        let gate = Client::gate(server.addr, &server.certs, 1).await;
        assert!(matches!(gate.hello(1).await, Message::HelloAck(a) if a.embedding_dim == support::DIM as u32));
        let reply = gate.request(&Message::Event(verify_event(1, 1, 7, now()))).await.unwrap();
        let Message::Verdict(v) = reply else { panic!("{reply:?}") };
        assert_eq!((v.decision, v.subject), (Decision::Admit, Some(SubjectId(7))));
        let reply = gate
            .request(&Message::Event(identify_event(1, 2, probe_of(11, 4), now())))
            .await
            .unwrap();
        assert!(matches!(reply, Message::Verdict(v) if v.subject == Some(SubjectId(11))));
        gate.close().await;
        server.stop().await;
    });
}

#[test]
fn a_gate_can_act_only_as_itself() {
    runtime().block_on(async {
        let server = start().await;
        let gate = Client::gate(server.addr, &server.certs, 1).await;
        // Hello as another gate: the certificate does not name it, and the connection ends.
        assert_eq!(error_code(&gate.hello(2).await), ErrorCode::GateMismatch);
        tokio::time::timeout(Duration::from_secs(5), gate.closed())
            .await
            .expect("a refused Hello must close the connection");
        let gate = Client::gate(server.addr, &server.certs, 1).await;
        // Events before a successful Hello are refused.
        let early = gate
            .request(&Message::Event(verify_event(1, 1, 7, now())))
            .await
            .unwrap();
        assert_eq!(error_code(&early), ErrorCode::HelloRequired);
        assert!(matches!(gate.hello(1).await, Message::HelloAck(_)));
        // An event claiming another gate on this connection.
        let forged = gate
            .request(&Message::Event(verify_event(2, 1, 7, now())))
            .await
            .unwrap();
        assert_eq!(error_code(&forged), ErrorCode::GateMismatch);
        gate.close().await;
        // A certified but unregistered gate.
        let stray = Client::gate(server.addr, &server.certs, 99).await;
        assert_eq!(error_code(&stray.hello(99).await), ErrorCode::UnknownGate);
        stray.close().await;
        server.stop().await;
    });
}

#[test]
fn admin_writes_need_an_admin_certificate() {
    runtime().block_on(async {
        let server = start().await;
        let revoke = Message::Revoke(Revoke {
            subject: SubjectId(7),
            reason: "test".to_owned(),
        });
        let gate = Client::gate(server.addr, &server.certs, 1).await;
        assert_eq!(
            error_code(&gate.request(&revoke).await.unwrap()),
            ErrorCode::Forbidden
        );
        let admin = Client::admin(server.addr, &server.certs).await;
        let ack = admin.request(&revoke).await.unwrap();
        assert!(matches!(ack, Message::RevokeAck(a) if a.revoked), "{ack:?}");
        assert!(matches!(gate.hello(1).await, Message::HelloAck(_)));
        let reply = gate
            .request(&Message::Event(verify_event(1, 1, 7, now())))
            .await
            .unwrap();
        assert!(matches!(reply, Message::Verdict(v) if v.decision == Decision::Deny));
        admin.close().await;
        gate.close().await;
        server.stop().await;
    });
}

#[test]
fn bad_frames_get_typed_errors_and_the_connection_survives() {
    runtime().block_on(async {
        let server = start().await;
        let gate = Client::gate(server.addr, &server.certs, 1).await;
        assert!(matches!(gate.hello(1).await, Message::HelloAck(_)));
        // A well-framed Event whose body is two bytes of garbage.
        let garbage = gate
            .request_raw(&[3, 0, 0, 0, 3, 0xff, 0xee])
            .await
            .unwrap();
        assert_eq!(error_code(&garbage), ErrorCode::Malformed);
        // (Frame headers over the limit: see front.rs.)
        // NaN cannot be encoded by the protocol crate; patch one float of a valid frame.
        let mut frame = Vec::new();
        encode_frame(&Message::Event(verify_event(1, 9, 7, now())), &mut frame);
        let nan = f32::NAN.to_le_bytes();
        let one = probe_of(7, 9)[0].to_le_bytes();
        let at = frame.windows(4).position(|w| w == one).unwrap();
        frame[at..at + 4].copy_from_slice(&nan);
        let reply = gate.request_raw(&frame).await.unwrap();
        assert_eq!(error_code(&reply), ErrorCode::InvalidValue);
        // The same connection still serves good events.
        let good = gate
            .request(&Message::Event(verify_event(1, 10, 7, now())))
            .await
            .unwrap();
        assert!(matches!(good, Message::Verdict(v) if v.decision == Decision::Admit));
        gate.close().await;
        server.stop().await;
    });
}

#[test]
fn a_client_without_a_fleet_certificate_is_refused() {
    runtime().block_on(async {
        let server = start().await;
        // A certificate from another CA: a second folder with its own fleet CA.
        let other = tempfile::tempdir().unwrap();
        let other_dir = CertDir(other.path().to_owned());
        ensure_dev_certs(&other_dir, [GateId(1)]).unwrap();
        let attempt = Client::connect(
            server.addr,
            &server.certs,
            &other_dir.gate_cert(GateId(1)),
            &other_dir.gate_key(GateId(1)),
        )
        .await;
        let refused = match attempt {
            Err(_) => true,
            // TLS 1.3 may finish the client side before the server rejects the certificate;
            // the first request then fails.
            Ok(client) => client.request(&hello_message(1)).await.is_err(),
        };
        assert!(refused, "a foreign certificate was accepted");
        server.stop().await;
    });
}
