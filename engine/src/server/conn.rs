//! One QUIC connection: its identity and its streams. Each bidirectional stream carries one
//! request frame and one reply frame (PROTOCOL.md, "Stream model"). This module only
//! translates between streams and the engine API; the decisions are the engine's.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gatewarden_protocol::{
    Busy, ErrorCode, ErrorReply, Event, GateId, Hello, HelloAck, Message, decode_frame,
    encode_frame, negotiate,
};
use rustls::pki_types::CertificateDer;
use tracing::{debug, info, warn};

use super::Ctx;
use super::tls::PeerCert;
use crate::Reply;

/// Retry hint when a request did not arrive in full within the read timeout.
const READ_TIMEOUT_RETRY_MS: u32 = 200;

/// What a connection has proven about itself.
struct ConnState {
    peer: PeerCert,
    is_admin: bool,
    /// Set by a successful Hello; every event must name this gate.
    gate: OnceLock<GateId>,
}

/// Serves one incoming connection until it closes.
pub(super) async fn serve(incoming: quinn::Incoming, ctx: Arc<Ctx>) {
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            debug!(error = %e, "handshake failed");
            return;
        }
    };
    let Some(peer) = peer_cert(&conn) else {
        conn.close(quinn::VarInt::from_u32(1), b"client certificate required");
        return;
    };
    let state = Arc::new(ConnState {
        is_admin: peer.is_admin(),
        peer,
        gate: OnceLock::new(),
    });
    ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
    let remote = conn.remote_address();
    debug!(%remote, admin = state.is_admin, "connection up");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let ctx = Arc::clone(&ctx);
                let state = Arc::clone(&state);
                let conn = conn.clone();
                ctx.stats.streams_in_flight.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    serve_stream(send, recv, &conn, &state, &ctx).await;
                    ctx.stats.streams_in_flight.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Err(e) => {
                debug!(%remote, reason = %e, "connection closed");
                break;
            }
        }
    }
    ctx.stats.connections.fetch_sub(1, Ordering::Relaxed);
}

fn peer_cert(conn: &quinn::Connection) -> Option<PeerCert> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    PeerCert::from_chain(&chain)
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    conn: &quinn::Connection,
    state: &ConnState,
    ctx: &Ctx,
) {
    let max = ctx.max_frame_len;
    let read = tokio::time::timeout(ctx.read_timeout, recv.read_to_end(max)).await;
    let reply = match read {
        // No complete request in time: under overload the runtime itself may be late, so
        // this is answered like overload (retry the same seq), not as a malformed request.
        Err(_) => Message::Busy(Busy {
            retry_after_ms: READ_TIMEOUT_RETRY_MS,
        }),
        Ok(Err(quinn::ReadToEndError::TooLong)) => {
            let _ = recv.stop(quinn::VarInt::from_u32(2));
            error(
                ErrorCode::FrameTooLarge,
                format!("request larger than the frame limit of {max} bytes"),
            )
        }
        Ok(Err(e)) => {
            debug!(error = %e, "stream read failed");
            return;
        }
        Ok(Ok(bytes)) => respond(&bytes, state, ctx).await,
    };
    let mut out = Vec::with_capacity(256);
    encode_frame(&reply, &mut out);
    // quinn delivers finished data even after the stream handle is dropped.
    if send.write_all(&out).await.is_ok() {
        let _ = send.finish();
    }
    if state.gate.get().is_none() && is_hello_refusal(&reply) && !state.is_admin {
        // PROTOCOL.md: a refused Hello ends the connection. Let the refusal arrive first.
        let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
        conn.close(quinn::VarInt::from_u32(2), b"hello refused");
    }
}

/// A refusal that leaves the connection without an identity (version, gate, registry).
fn is_hello_refusal(reply: &Message) -> bool {
    matches!(reply, Message::Error(e) if matches!(
        e.code,
        ErrorCode::VersionUnsupported | ErrorCode::GateMismatch | ErrorCode::UnknownGate
    ))
}

async fn respond(bytes: &[u8], state: &ConnState, ctx: &Ctx) -> Message {
    let message = match decode_frame(bytes) {
        Ok(m) => m,
        Err(e) => {
            ctx.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return error(e.error_code(), e.to_string());
        }
    };
    match message {
        Message::Hello(hello) => on_hello(&hello, state, ctx),
        Message::Event(event) => on_event(event, state, ctx).await,
        Message::Enroll(req) => {
            admin(state, ctx, move |e| e.enroll(&req).map(Message::EnrollAck)).await
        }
        Message::UpdateHealth(req) => {
            admin(state, ctx, move |e| {
                e.update_health(&req).map(Message::UpdateHealthAck)
            })
            .await
        }
        Message::Revoke(req) => {
            admin(state, ctx, move |e| e.revoke(&req).map(Message::RevokeAck)).await
        }
        other => error(
            ErrorCode::Unexpected,
            format!("{:?} is not a request a server accepts", other.kind()),
        ),
    }
}

fn on_hello(hello: &Hello, state: &ConnState, ctx: &Ctx) -> Message {
    let version = match negotiate(hello) {
        Ok(v) => v,
        Err(refusal) => return Message::Error(refusal),
    };
    if !state.peer.is_gate(hello.gate) {
        warn!(gate = %hello.gate, "hello names a gate the certificate does not");
        return error(
            ErrorCode::GateMismatch,
            format!("the client certificate does not name gate {}", hello.gate),
        );
    }
    let Some(info) = ctx.engine.store().gate(hello.gate) else {
        return error(
            ErrorCode::UnknownGate,
            format!("gate {} is not registered; import it first", hello.gate),
        );
    };
    if info.market != hello.market {
        return error(
            ErrorCode::UnknownGate,
            format!(
                "gate {} is registered in market {}, not {}",
                hello.gate, info.market, hello.market
            ),
        );
    }
    if state.gate.get_or_init(|| hello.gate) != &hello.gate {
        return error(
            ErrorCode::Unexpected,
            "this connection already said hello as another gate".to_owned(),
        );
    }
    info!(gate = %hello.gate, firmware = %hello.firmware, "gate connected");
    let config = ctx.engine.config();
    Message::HelloAck(HelloAck {
        version,
        embedding_dim: u32::try_from(config.dim).unwrap_or(u32::MAX),
        model: config.model.clone(),
        max_frame_len: u32::try_from(gatewarden_protocol::MAX_GATE_FRAME_LEN).unwrap_or(u32::MAX),
    })
}

async fn on_event(event: Event, state: &ConnState, ctx: &Ctx) -> Message {
    let Some(gate) = state.gate.get() else {
        return error(
            ErrorCode::HelloRequired,
            "send Hello on the first stream before any event".to_owned(),
        );
    };
    if event.gate != *gate {
        ctx.stats.gate_mismatch.fetch_add(1, Ordering::Relaxed);
        warn!(connection_gate = %gate, event_gate = %event.gate, "event for another gate refused");
        return error(
            ErrorCode::GateMismatch,
            format!(
                "this connection is gate {gate}; it cannot send events for gate {}",
                event.gate
            ),
        );
    }
    match ctx.engine.submit(event).await {
        Reply::Verdict(v) => Message::Verdict(v),
        Reply::Busy(b) => Message::Busy(b),
        Reply::Error(e) => Message::Error(e),
    }
}

/// Runs an admin write on a blocking thread, if the peer is an admin.
async fn admin<F>(state: &ConnState, ctx: &Ctx, op: F) -> Message
where
    F: FnOnce(&crate::Engine) -> Result<Message, crate::Error> + Send + 'static,
{
    if !state.is_admin {
        return error(
            ErrorCode::Forbidden,
            "admin writes need an admin certificate".to_owned(),
        );
    }
    let engine = Arc::clone(&ctx.engine);
    match tokio::task::spawn_blocking(move || op(&engine)).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(crate::Error::Invalid(reason))) => error(ErrorCode::InvalidValue, reason),
        Ok(Err(e)) => error(ErrorCode::Internal, e.to_string()),
        Err(_) => error(ErrorCode::Internal, "admin request failed".to_owned()),
    }
}

fn error(code: ErrorCode, message: String) -> Message {
    // ErrorReply::new bounds the text to what the wire allows.
    Message::Error(ErrorReply::new(code, message))
}
