//! The answers PROTOCOL.md gives to a new gate team's questions, each checked through the
//! real QUIC server: the TLS alerts a refused client sees, events without a face, any
//! `captured_at`, a lower unused `seq`, the colour and the withheld subject.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gatewarden::server::certs::{CertDir, ensure_dev_certs, gate_name};
use gatewarden::server::tls::{client_config, load_certs};
use gatewarden_protocol::{
    Credential, Decision, DisplayColour, GateId, Message, Mode, UnixMillis, Verdict,
};
use quinn::crypto::rustls::QuicClientConfig;

use crate::quic::Client;
use crate::server::{now, runtime, start};
use crate::support::{identify_event, probe_of, verify_event};

/// Connects with `tls` and returns how the server ended the connection.
async fn refusal(addr: SocketAddr, tls: rustls::ClientConfig) -> quinn::ConnectionError {
    let quic = QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let error = match endpoint.connect(addr, "localhost").unwrap().await {
        Err(e) => e,
        // TLS 1.3: the client may finish before the server has judged its certificate.
        Ok(conn) => conn.closed().await,
    };
    endpoint.wait_idle().await;
    error
}

/// The TLS alert carried by a QUIC CONNECTION_CLOSE (transport code 0x0100 + alert).
fn tls_alert(error: &quinn::ConnectionError) -> Option<u8> {
    let quinn::ConnectionError::ConnectionClosed(close) = error else {
        return None;
    };
    (0..=u8::MAX).find(|a| close.error_code == quinn::TransportErrorCode::crypto(*a))
}

#[test]
fn refused_handshakes_carry_the_documented_tls_alerts() {
    runtime().block_on(async {
        let server = start().await;
        let dir = CertDir(server.certs.clone());
        let gate_cert = dir.gate_cert(GateId(1));
        let gate_key = dir.gate_key(GateId(1));
        let provider = || Arc::new(rustls::crypto::ring::default_provider());
        let fleet_roots = || {
            let mut roots = rustls::RootCertStore::empty();
            for ca in load_certs(&dir.ca_cert()).unwrap() {
                roots.add(ca).unwrap();
            }
            roots
        };

        // No client certificate: certificate_required (116).
        let mut anonymous = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(fleet_roots())
            .with_no_client_auth();
        anonymous.alpn_protocols = vec![gatewarden_protocol::ALPN.to_vec()];
        let e = refusal(server.addr, anonymous).await;
        assert_eq!(tls_alert(&e), Some(116), "{e}");

        // Another site's development CA has the fleet CA's name but another key: the
        // signature check fails, decrypt_error (51).
        let other = tempfile::tempdir().unwrap();
        let other_dir = CertDir(other.path().to_owned());
        ensure_dev_certs(&other_dir, [GateId(1)]).unwrap();
        let mut same_name = client_config(
            &dir,
            &other_dir.gate_cert(GateId(1)),
            &other_dir.gate_key(GateId(1)),
        )
        .unwrap();
        same_name.alpn_protocols = vec![gatewarden_protocol::ALPN.to_vec()];
        let e = refusal(server.addr, same_name).await;
        assert_eq!(tls_alert(&e), Some(51), "{e}");

        // A CA of another name: unknown_ca (48).
        let (cert, key) = gate_cert_from_a_stranger_ca(other.path(), GateId(1));
        let e = refusal(server.addr, client_config(&dir, &cert, &key).unwrap()).await;
        assert_eq!(tls_alert(&e), Some(48), "{e}");

        // Another application protocol: no_application_protocol (120).
        let mut other_alpn = client_config(&dir, &gate_cert, &gate_key).unwrap();
        other_alpn.alpn_protocols = vec![b"gatewarden/2".to_vec()];
        let e = refusal(server.addr, other_alpn).await;
        assert_eq!(tls_alert(&e), Some(120), "{e}");
        server.stop().await;
    });
}

/// A certificate naming gate `gate`, issued by a CA that is not the fleet CA and has another
/// name; returns the certificate and key files written under `dir`.
fn gate_cert_from_a_stranger_ca(dir: &Path, gate: GateId) -> (PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "a stranger's CA");
    let ca_key = KeyPair::generate().unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec![gate_name(gate)]).unwrap();
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let (cert_path, key_path) = (dir.join("stranger.pem"), dir.join("stranger.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

fn verdict(reply: Message) -> Verdict {
    match reply {
        Message::Verdict(v) => v,
        other => panic!("expected a verdict, got {other:?}"),
    }
}

#[test]
fn documented_event_answers_hold() {
    runtime().block_on(async {
        let server = start().await;
        let gate = Client::gate(server.addr, &server.certs, 1).await;
        assert!(matches!(gate.hello(1).await, Message::HelloAck(_)));

        // Identify without a face: a verdict, deny, red, naming no one.
        let mut faceless = identify_event(1, 100, probe_of(7, 100), now());
        faceless.face = None;
        let v = verdict(gate.request(&Message::Event(faceless)).await.unwrap());
        assert_eq!(
            (v.decision, v.subject, v.score),
            (Decision::Deny, None, None)
        );
        assert_eq!(v.display.colour, DisplayColour::Red);

        // An unknown card withholds the subject even with a good face of someone enrolled.
        let mut stranger_card = verify_event(1, 101, 7, now());
        stranger_card.mode = Mode::Verify {
            credential: Credential::IdCard("000000000000000000".to_owned()),
        };
        let v = verdict(gate.request(&Message::Event(stranger_card)).await.unwrap());
        assert_eq!(
            (v.decision, v.subject, v.score),
            (Decision::Deny, None, None)
        );

        // Any captured_at is accepted and changes no decision: the epoch and far ahead.
        for (seq, at) in [
            (102, UnixMillis(0)),
            (103, UnixMillis(now().0 + 365 * 86_400_000)),
        ] {
            let v = verdict(
                gate.request(&Message::Event(verify_event(1, seq, 7, at)))
                    .await
                    .unwrap(),
            );
            assert_eq!(v.decision, Decision::Admit, "captured_at {at:?}: {v:?}");
            assert_eq!(v.display.colour, DisplayColour::Green);
            assert!(v.score.is_some_and(|s| (-1.0..=1.0).contains(&s)), "{v:?}");
        }

        // A lower seq that was never recorded is decided as new, not replayed.
        let v = verdict(
            gate.request(&Message::Event(verify_event(1, 50, 9, now())))
                .await
                .unwrap(),
        );
        assert!(!v.replayed, "{v:?}");
        assert_eq!(v.subject, Some(gatewarden_protocol::SubjectId(9)));
        gate.close().await;
        server.stop().await;
    });
}
