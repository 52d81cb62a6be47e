//! Every error path of the admin messages over the real QUIC server: a request that can never
//! succeed as sent is answered with a 1xx or 2xx code, never a 3xx (which tells a conforming
//! client to retry the same request forever).

use gatewarden_protocol::{
    Category, ErrorCode, FaceTemplate, HealthRecord, MarketId, Message, Revoke, SubjectId,
    SubjectRecord, SubjectStatus, UpdateHealth, encode_frame,
};

use crate::quic::Client;
use crate::server::{now, runtime, start};
use crate::support::{self, face_of, id_card, stranger};

/// A subject record of a new shopper, with no credentials.
fn person(subject: u64) -> SubjectRecord {
    SubjectRecord {
        subject: SubjectId(subject),
        category: Category::Shopper,
        home_market: MarketId(1),
        markets: vec![],
        zones: vec![],
        valid_from: None,
        valid_until: None,
        id_card: None,
        qr_tokens: vec![],
        status: SubjectStatus::Active,
    }
}

fn template(model: &str, embedding: Vec<f32>) -> FaceTemplate {
    FaceTemplate {
        model: model.to_owned(),
        embedding,
    }
}

fn enroll(subject: SubjectRecord, templates: Vec<FaceTemplate>) -> Message {
    Message::Enroll(gatewarden_protocol::Enroll { subject, templates })
}

/// Sends `request` and checks it is refused with `expected`, a code that says "do not resend
/// unchanged" (never a 3xx); returns the error's text.
async fn refused(client: &Client, what: &str, request: &Message, expected: ErrorCode) -> String {
    let reply = client.request(request).await.unwrap();
    refused_reply(what, &reply, expected)
}

fn refused_reply(what: &str, reply: &Message, expected: ErrorCode) -> String {
    let Message::Error(e) = reply else {
        panic!("{what}: expected error {expected:?}, got {reply:?}");
    };
    assert!(
        !e.code.is_transient(),
        "{what}: a request that can never succeed was answered {:?} ({}), which asks for a \
         retry",
        e.code,
        e.message
    );
    assert_eq!(e.code, expected, "{what}: {}", e.message);
    e.message.clone()
}

#[test]
fn admin_requests_that_can_never_succeed_get_no_3xx() {
    runtime().block_on(async {
        let server = start().await;
        let admin = Client::admin(server.addr, &server.certs).await;
        let model = support::MODEL;

        // Templates the gallery cannot take: the same codes as an event's face would get.
        let other_model = enroll(person(1001), vec![template("other-model", stranger(1))]);
        refused(&admin, "another model", &other_model, ErrorCode::UnknownModel).await;
        let short = enroll(person(1001), vec![template(model, vec![0.5, 0.5, 0.5])]);
        refused(&admin, "a 3-value template", &short, ErrorCode::DimensionMismatch).await;
        let zeros = enroll(person(1001), vec![template(model, vec![0.0; support::DIM])]);
        refused(&admin, "an all-zero template", &zeros, ErrorCode::InvalidValue).await;

        // NaN cannot pass the protocol crate's encoder checks; patch one float of a valid frame.
        let mut frame = Vec::new();
        let face = stranger(2);
        encode_frame(&enroll(person(1001), vec![template(model, face.clone())]), &mut frame);
        let at = frame
            .windows(4)
            .position(|w| w == face[0].to_le_bytes())
            .unwrap();
        frame[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        let reply = admin.request_raw(&frame).await.unwrap();
        refused_reply("a NaN in a template", &reply, ErrorCode::InvalidValue);

        // A validity window that ends before it starts.
        let mut backwards = person(1001);
        backwards.valid_from = Some(now());
        backwards.valid_until = Some(gatewarden_protocol::UnixMillis(now().0 - 1));
        refused(
            &admin,
            "valid_until before valid_from",
            &enroll(backwards, vec![]),
            ErrorCode::InvalidValue,
        )
        .await;

        // An ID card already held by another person (subject 7 holds this one).
        let mut thief = person(1002);
        thief.id_card = Some(id_card(7));
        let text = refused(
            &admin,
            "an ID card held by subject 7",
            &enroll(thief, vec![]),
            ErrorCode::InvalidValue,
        )
        .await;
        assert!(text.contains("subject 7"), "{text}");
        // A staff QR token already held by another person.
        let mut holder = person(1003);
        holder.qr_tokens = vec!["QR-1003".to_owned()];
        let ack = admin.request(&enroll(holder, vec![])).await.unwrap();
        assert!(matches!(&ack, Message::EnrollAck(_)), "{ack:?}");
        let mut second = person(1004);
        second.qr_tokens = vec!["QR-1003".to_owned()];
        refused(
            &admin,
            "a QR token held by subject 1003",
            &enroll(second, vec![]),
            ErrorCode::InvalidValue,
        )
        .await;

        // A record that would lift a revocation: only an audited reinstatement does that.
        let revoke_8 = Message::Revoke(Revoke {
            subject: SubjectId(8),
            reason: "test".to_owned(),
        });
        let ack = admin.request(&revoke_8).await.unwrap();
        assert!(matches!(&ack, Message::RevokeAck(a) if a.revoked), "{ack:?}");
        let text = refused(
            &admin,
            "an enrolment lifting subject 8's revocation",
            &enroll(person(8), vec![]),
            ErrorCode::InvalidValue,
        )
        .await;
        assert!(text.contains("reinstate"), "{text}");

        // A revocation reason longer than the wire allows.
        let long_reason = Message::Revoke(Revoke {
            subject: SubjectId(7),
            reason: "x".repeat(gatewarden_protocol::MAX_STRING_LEN + 1),
        });
        refused(
            &admin,
            "a 257-byte reason",
            &long_reason,
            ErrorCode::InvalidValue,
        )
        .await;

        // Unknown subjects are not errors: the acks say so.
        let unknown_health = Message::UpdateHealth(UpdateHealth {
            records: vec![HealthRecord {
                subject: SubjectId(424_242),
                test_at: None,
                test_result: None,
                vaccine_doses: 0,
                health_code: gatewarden_protocol::CodeColour::Green,
                travel_code: gatewarden_protocol::CodeColour::Green,
                updated_at: now(),
            }],
        });
        let ack = admin.request(&unknown_health).await.unwrap();
        assert!(
            matches!(&ack, Message::UpdateHealthAck(a) if a.applied == 0 && a.unknown_subjects == 1),
            "{ack:?}"
        );
        let unknown_revoke = Message::Revoke(Revoke {
            subject: SubjectId(424_242),
            reason: "test".to_owned(),
        });
        let ack = admin.request(&unknown_revoke).await.unwrap();
        assert!(matches!(&ack, Message::RevokeAck(a) if !a.revoked), "{ack:?}");

        // An admin connection sends no gate messages.
        let hello_free = Message::Event(support::verify_event(1, 1, 7, now()));
        refused(&admin, "an event from an admin", &hello_free, ErrorCode::Forbidden).await;

        // After every refusal the connection still serves a good request, and a
        // re-enrolment of an existing person adds their template.
        let again = enroll(
            person(7),
            vec![template(model, face_of(7))],
        );
        let ack = admin.request(&again).await.unwrap();
        assert!(
            matches!(&ack, Message::EnrollAck(a) if a.subject == SubjectId(7) && a.templates_added == 1),
            "{ack:?}"
        );
        admin.close().await;

        // A gate certificate may send none of the admin messages.
        let gate = Client::gate(server.addr, &server.certs, 1).await;
        for request in [&short, &unknown_health, &unknown_revoke] {
            refused(&gate, "an admin message from a gate", request, ErrorCode::Forbidden).await;
        }
        gate.close().await;
        server.stop().await;
    });
}
