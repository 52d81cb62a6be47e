//! A fleet that loses its server at once (issue 13): the restarted server keeps its
//! stateless-reset key, so every connection of the old server ends in a stateless reset at
//! the gate's next packet (not in an idle timeout), and every gate is served again after one
//! reconnect.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gatewarden::clock::{Clock, SystemClock};
use gatewarden::server::certs::CertDir;
use gatewarden::server::tls::client_config;
use gatewarden_protocol::{GateId, Message};
use quinn::crypto::rustls::QuicClientConfig;

use crate::crash::{prepare, spawn_server};
use crate::quic::{Client, hello_message};
use crate::support::{GATES, PEOPLE, verify_event};

/// Connections of the fleet: several per registered gate (the server allows that).
const FLEET: u32 = 48;

/// A gate connection that sends keep-alives often and would wait a minute for an idle
/// timeout: only a stateless reset can end it quickly.
async fn keep_alive_connection(
    endpoint: &quinn::Endpoint,
    addr: std::net::SocketAddr,
    certs: &Path,
    gate: u32,
) -> quinn::Connection {
    let dir = CertDir(certs.to_owned());
    let tls = client_config(
        &dir,
        &dir.gate_cert(GateId(gate)),
        &dir.gate_key(GateId(gate)),
    )
    .unwrap();
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_millis(100)));
    transport.max_idle_timeout(Some(Duration::from_secs(60).try_into().unwrap()));
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    config.transport_config(Arc::new(transport));
    endpoint
        .connect_with(config, addr, "localhost")
        .unwrap()
        .await
        .unwrap()
}

async fn say_hello(conn: &quinn::Connection, gate: u32) -> Message {
    let mut frame = Vec::new();
    gatewarden_protocol::encode_frame(&hello_message(gate), &mut frame);
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&frame).await.unwrap();
    send.finish().unwrap();
    gatewarden_protocol::decode_frame(&recv.read_to_end(1 << 16).await.unwrap()).unwrap()
}

#[test]
fn a_restarted_server_resets_the_old_connections_and_the_fleet_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemClock.now();
    prepare(dir.path(), now);
    let certs = dir.path().join("certs");
    let (mut first, addr) = spawn_server(dir.path());
    // The restarted server must listen where the gates dial: pin the port it was given.
    let config = dir.path().join("gatewarden.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replacen("127.0.0.1:0", &addr.to_string(), 1)).unwrap();
    let runtime = crate::server::runtime();
    runtime.block_on(async {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let gate_of = |i: u32| 1 + i % GATES;
        let mut fleet = Vec::new();
        for i in 0..FLEET {
            let conn = keep_alive_connection(&endpoint, addr, &certs, gate_of(i)).await;
            assert!(matches!(
                say_hello(&conn, gate_of(i)).await,
                Message::HelloAck(_)
            ));
            fleet.push(conn);
        }
        first.0.kill().unwrap(); // SIGKILL: no CONNECTION_CLOSE reaches the gates
        first.0.wait().unwrap();
        let (_second, again) = spawn_server(dir.path());
        assert_eq!(again, addr);
        for conn in &fleet {
            // Bounded so that a regression fails instead of hanging; an idle timeout would
            // take 60 s and is refused below anyway.
            let reason = tokio::time::timeout(Duration::from_secs(50), conn.closed())
                .await
                .expect("an old connection outlived the restart");
            assert!(
                matches!(reason, quinn::ConnectionError::Reset),
                "{reason:?}: the restarted server did not reset the connection"
            );
        }
        // Every gate reconnects (a fresh handshake) and is served.
        for i in 0..FLEET {
            let client = Client::gate(addr, &certs, gate_of(i)).await;
            assert!(matches!(
                client.hello(gate_of(i)).await,
                Message::HelloAck(_)
            ));
            let event = verify_event(gate_of(i), 1 + u64::from(i), 1 + u64::from(i) % PEOPLE, now);
            let mut reply = client
                .request(&Message::Event(event.clone()))
                .await
                .unwrap();
            // A cold server may still ask for a retry; the same event, as a gate would.
            for _ in 0..20 {
                let Message::Busy(busy) = &reply else { break };
                tokio::time::sleep(Duration::from_millis(u64::from(busy.retry_after_ms))).await;
                reply = client
                    .request(&Message::Event(event.clone()))
                    .await
                    .unwrap();
            }
            assert!(matches!(reply, Message::Verdict(_)), "{reply:?}");
            client.close().await;
        }
    });
}

/// Connects as `gate`, backing off and trying again while the server refuses the handshake
/// (as PROTOCOL.md's "Reconnecting" asks of a gate).
async fn connect_patiently(addr: std::net::SocketAddr, certs: &Path, gate: u32) -> Client {
    let dir = CertDir(certs.to_owned());
    let (cert, key) = (dir.gate_cert(GateId(gate)), dir.gate_key(GateId(gate)));
    for attempt in 1..=100u64 {
        match Client::connect(addr, certs, &cert, &key).await {
            Ok(client) => return client,
            Err(e) => {
                assert!(e.contains("refused"), "attempt {attempt}: {e}");
                tokio::time::sleep(Duration::from_millis(10 * attempt.min(10))).await;
            }
        }
    }
    panic!("gate {gate} was refused 100 times");
}

#[test]
fn under_handshake_pressure_unvalidated_addresses_are_retried_and_every_gate_gets_in() {
    const DIALLING: u32 = 24;
    crate::server::runtime().block_on(async {
        // Two handshakes at once at most: from the first one in progress on, a new address
        // must answer a QUIC Retry before it may hold a slot.
        let running = crate::server::start_with(|c| c.max_handshakes = 2).await;
        let dialling: Vec<_> = (0..DIALLING)
            .map(|i| {
                let (addr, certs) = (running.addr, running.certs.clone());
                tokio::spawn(async move {
                    let gate = 1 + i % 4;
                    let client = connect_patiently(addr, &certs, gate).await;
                    let reply = client.hello(gate).await;
                    client.close().await;
                    reply
                })
            })
            .collect();
        for task in dialling {
            assert!(matches!(task.await.unwrap(), Message::HelloAck(_)));
        }
        let stats = running.stats.snapshot();
        assert!(
            stats.handshakes_retried > 0,
            "{DIALLING} gates dialling at once, and no Retry: {stats:?}"
        );
        running.stop().await;
    });
}
