//! One QUIC connection: its identity and its streams. Each bidirectional stream carries one
//! request frame and one reply frame (PROTOCOL.md, "Stream model"). This module only
//! translates between streams and the engine API; the decisions are the engine's.
//!
//! Requests are read header first: the 5-byte frame header is checked against the kind's
//! limit and against what this connection may send before any body byte is buffered, so a
//! refused request costs the server 5 bytes and is answered at once. The frames being read or
//! served on one connection share a budget of [`BODY_BUDGET`] bytes.
//!
//! Shedding below the request. While the engine sheds (its queue stands), an event is refused
//! from its frame header alone (`Busy`, then STOP_SENDING: its body is never read nor
//! decoded), and a gate that gets `Busy` loses its QUIC stream credit for half the retry hint
//! (the shortest pause PROTOCOL.md lets a gate take), then gets one stream at a time until
//! the engine stops shedding ([`Credit`]). A gate that is told to wait thus cannot open
//! streams at all while it waits: its other events wait inside the gate, costing the server
//! no packet. Fairness: while the engine sheds, every gate has at most one request in flight
//! and each refusal buys the same pause, so one gate's burst cannot take the door from the
//! others.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gatewarden_protocol::limits::MAX_RETRY_AFTER_MS;
use gatewarden_protocol::{
    Busy, DecodeError, ErrorCode, ErrorReply, Event, FRAME_HEADER_LEN, GateId, Hello, HelloAck,
    MAX_ADMIN_FRAME_LEN, MarketId, Message, MessageKind, Redirect, decode_frame, encode_frame,
    frame_len_hint, negotiate,
};
use rustls::pki_types::CertificateDer;
use tokio::sync::{Semaphore, SemaphorePermit};
use tracing::{debug, info, warn};

use super::Ctx;
use super::log_text::PeerText;
use super::tls::PeerCert;
use crate::Reply;
use crate::cluster::Ownership;

/// Retry hint when a request did not arrive in full within the read timeout.
const READ_TIMEOUT_RETRY_MS: u32 = 200;
/// Retry hint when a request's frame does not fit the connection's body budget.
const BUDGET_RETRY_MS: u32 = 100;

/// Bytes of request frames one connection may hold at once: two of the largest admin frames,
/// or every stream of a gate (32 by default) with an event of up to 64 KiB. A frame that does
/// not fit is answered `Busy` at once rather than left waiting: a waiting stream's unread data
/// would hold the connection's flow-control window, which the streams being read need.
pub(super) const BODY_BUDGET: usize = 2 * MAX_ADMIN_FRAME_LEN;

/// Application error code of STOP_SENDING on a request refused from its header: the server
/// will not read the rest.
const STOP_REFUSED: quinn::VarInt = quinn::VarInt::from_u32(1);
/// Application close code: the client presented no certificate.
const CLOSE_NO_CERTIFICATE: quinn::VarInt = quinn::VarInt::from_u32(1);
/// Application close code: a Hello was answered with an error.
const CLOSE_HELLO_REFUSED: quinn::VarInt = quinn::VarInt::from_u32(2);
/// Application close code: a Hello was answered with a Redirect.
const CLOSE_REDIRECTED: quinn::VarInt = quinn::VarInt::from_u32(3);

/// Streams a gate may have open at once while the engine sheds (see [`Credit`]).
const SHED_CREDIT: u32 = 1;

/// What a connection has proven about itself.
struct ConnState {
    peer: PeerCert,
    is_admin: bool,
    /// Set by a successful Hello; every event must name this gate.
    hello: OnceLock<Greeted>,
    /// Bytes of request frames this connection may hold (see [`BODY_BUDGET`]).
    body_budget: Semaphore,
    /// The connection's stream credit, lowered while the engine sheds.
    credit: Credit,
}

/// What a successful Hello established for a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Greeted {
    /// The certificate's gate, which every event must name.
    gate: GateId,
    /// The gate's market as the registry gave it at the Hello: the market whose node is
    /// asked about for every event.
    market: MarketId,
    /// The negotiated protocol version: `Redirect` only from version 2 on.
    version: u16,
}

/// A connection's bidirectional stream credit. QUIC cannot take back credit already granted,
/// but it grants new credit only as streams close, up to the limit; lowering the limit to 0
/// therefore stops a gate once it has used what it holds, and quinn sends the new credit
/// (MAX_STREAMS) the moment the limit is raised again. A paused gate's streams wait inside the
/// gate (in `open_bi`), where they cost the server nothing.
struct Credit {
    /// The configured limit (`max_streams_per_gate`).
    full: u32,
    state: std::sync::Mutex<CreditState>,
    /// Wakes the accept loop when a pause starts, so that it arms its timer.
    paused: tokio::sync::Notify,
}

#[derive(Debug)]
struct CreditState {
    /// The limit last given to quinn.
    limit: u32,
    /// While set, the limit is 0 until then.
    resume_at: Option<tokio::time::Instant>,
}

impl Credit {
    fn new(full: u32) -> Self {
        Self {
            full,
            state: std::sync::Mutex::new(CreditState {
                limit: full,
                resume_at: None,
            }),
            paused: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CreditState> {
        // The state is two plain fields, each always valid on its own.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A request of this gate was refused with `Busy` while the engine sheds: no new stream
    /// for half the hint.
    fn pause(&self, conn: &quinn::Connection, retry_after_ms: u32) {
        let until = tokio::time::Instant::now()
            + Duration::from_millis(u64::from(retry_after_ms.max(2) / 2));
        let mut s = self.lock();
        s.resume_at = Some(s.resume_at.map_or(until, |at| at.max(until)));
        if s.limit != 0 {
            s.limit = 0;
            conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(0));
        }
        drop(s);
        self.paused.notify_one();
    }

    /// When the current pause ends, if one is running.
    fn resume_at(&self) -> Option<tokio::time::Instant> {
        self.lock().resume_at
    }

    /// Ends a pause that has run its time (one stream at a time while the engine still sheds),
    /// or restores the full limit once a stream arrives and the engine no longer sheds.
    fn update(&self, conn: &quinn::Connection, shedding: bool) {
        let mut s = self.lock();
        if let Some(at) = s.resume_at {
            if tokio::time::Instant::now() < at {
                return;
            }
            s.resume_at = None;
        }
        let limit = if shedding {
            SHED_CREDIT.min(self.full)
        } else {
            self.full
        };
        if s.limit != limit {
            s.limit = limit;
            conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(limit));
        }
    }
}

/// Serves one incoming connection until it closes.
pub(super) async fn serve(incoming: quinn::Incoming, ctx: Arc<Ctx>) {
    let handshake = incoming.await;
    ctx.stats
        .handshakes_in_flight
        .fetch_sub(1, Ordering::Relaxed);
    let conn = match handshake {
        Ok(conn) => conn,
        Err(e) => {
            debug!(error = %PeerText(&e.to_string()), "handshake failed");
            return;
        }
    };
    let Some(peer) = peer_cert(&conn) else {
        conn.close(CLOSE_NO_CERTIFICATE, b"client certificate required");
        return;
    };
    let state = Arc::new(ConnState {
        is_admin: peer.is_admin(),
        peer,
        hello: OnceLock::new(),
        body_budget: Semaphore::new(BODY_BUDGET),
        credit: Credit::new(ctx.max_streams),
    });
    ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
    let remote = conn.remote_address();
    debug!(%remote, admin = state.is_admin, "connection up");
    loop {
        let resume_at = state.credit.resume_at();
        let accepted = tokio::select! {
            accepted = conn.accept_bi() => accepted,
            () = state.credit.paused.notified() => continue,
            () = sleep_until_some(resume_at) => {
                state.credit.update(&conn, ctx.engine.is_shedding());
                continue;
            }
        };
        match accepted {
            Ok((send, recv)) => {
                state.credit.update(&conn, ctx.engine.is_shedding());
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
                debug!(%remote, reason = %PeerText(&e.to_string()), "connection closed");
                break;
            }
        }
    }
    ctx.stats.connections.fetch_sub(1, Ordering::Relaxed);
}

/// Sleeps until `at`, or for ever without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
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
    let read = tokio::time::timeout(ctx.read_timeout, read_request(&mut recv, state, ctx)).await;
    let (kind, reply) = match read {
        // No complete request in time: under overload the runtime itself may be late, so
        // this is answered like overload (retry the same seq), not as a malformed request.
        Err(_) => (
            None,
            Message::Busy(Busy {
                retry_after_ms: READ_TIMEOUT_RETRY_MS,
            }),
        ),
        Ok(Err(Refusal::Broken(e))) => {
            debug!(error = %PeerText(&e.to_string()), "stream read failed");
            return;
        }
        Ok(Err(Refusal::Answer { kind, reply })) => {
            if matches!(&reply, Message::Error(e)
                if matches!(e.code, ErrorCode::Malformed | ErrorCode::FrameTooLarge))
            {
                ctx.stats.malformed.fetch_add(1, Ordering::Relaxed);
            }
            // The rest of the request is not wanted: tell the peer to stop sending it.
            let _ = recv.stop(STOP_REFUSED);
            (kind, reply)
        }
        Ok(Ok(request)) => (
            Some(request.kind),
            respond(&request.frame, state, ctx).await,
        ),
    };
    if let Message::Busy(busy) = &reply
        && kind == Some(MessageKind::Event)
        && ctx.shed_below
        && ctx.engine.is_shedding()
    {
        state.credit.pause(conn, busy.retry_after_ms);
    }
    let mut out = Vec::with_capacity(256);
    encode_frame(&reply, &mut out);
    // quinn delivers finished data even after the stream handle is dropped.
    if send.write_all(&out).await.is_ok() {
        let _ = send.finish();
    }
    if let Some((code, reason)) = ends_connection(kind, &reply) {
        // PROTOCOL.md section 2: a refused or redirected Hello ends the connection. Let the
        // answer arrive first.
        let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
        conn.close(code, reason);
    }
}

/// Every error in answer to a Hello closes the connection, whatever its class, and so does a
/// Redirect: a gate without an accepted Hello has no use for the connection. Returns the
/// application close code and reason.
fn ends_connection(
    kind: Option<MessageKind>,
    reply: &Message,
) -> Option<(quinn::VarInt, &'static [u8])> {
    if kind != Some(MessageKind::Hello) {
        return None;
    }
    match reply {
        Message::Error(_) => Some((CLOSE_HELLO_REFUSED, &b"hello refused"[..])),
        Message::Redirect(_) => Some((CLOSE_REDIRECTED, &b"redirected"[..])),
        _ => None,
    }
}

/// One whole request frame, read header first.
struct Request<'a> {
    kind: MessageKind,
    frame: Vec<u8>,
    /// The frame's share of the connection's body budget, held until the request is served.
    _budget: SemaphorePermit<'a>,
}

/// Why a request stream yields no frame to decode.
enum Refusal {
    /// Refused from what was read so far; `kind` is the header's when it named one.
    Answer {
        kind: Option<MessageKind>,
        reply: Message,
    },
    /// The stream was reset or the connection lost: there is nobody to answer.
    Broken(quinn::ReadError),
}

impl From<DecodeError> for Refusal {
    fn from(e: DecodeError) -> Self {
        Self::Answer {
            kind: None,
            reply: Message::Error(e.to_error_reply()),
        }
    }
}

impl Refusal {
    /// The same refusal, answering a request whose header named `kind`.
    fn of_kind(self, kind: MessageKind) -> Self {
        match self {
            Self::Answer { reply, .. } => Self::Answer {
                kind: Some(kind),
                reply,
            },
            broken @ Self::Broken(_) => broken,
        }
    }

    fn malformed(reason: &str) -> Self {
        Self::Answer {
            kind: None,
            reply: error(ErrorCode::Malformed, reason.to_owned()),
        }
    }
}

/// Reads a request header first: the 5-byte header is checked (length against the kind's
/// limit, kind known, kind one this connection may send) before any body byte is buffered.
/// A request is one frame followed by FIN. While the engine sheds, an event of a gate that
/// said Hello is refused `Busy` from its header: reading and decoding it would cost as much
/// as the refusal saves.
async fn read_request<'a>(
    recv: &mut quinn::RecvStream,
    state: &'a ConnState,
    ctx: &Ctx,
) -> Result<Request<'a>, Refusal> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    read_exactly(recv, &mut header).await?;
    let total =
        frame_len_hint(&header)?.ok_or_else(|| Refusal::malformed("incomplete frame header"))?;
    let kind_code = header[FRAME_HEADER_LEN - 1];
    let kind = MessageKind::try_from_code(kind_code).ok_or(DecodeError::UnknownKind(kind_code))?;
    if let Some(reply) = kind_refusal(kind, state) {
        return Err(Refusal::Answer {
            kind: Some(kind),
            reply,
        });
    }
    if kind == MessageKind::Event
        && ctx.shed_below
        && state.hello.get().is_some()
        && let Some(busy) = ctx.engine.refuse_at_door()
    {
        return Err(Refusal::Answer {
            kind: Some(kind),
            reply: Message::Busy(busy),
        });
    }
    read_body(recv, state, header, total)
        .await
        .map(|(frame, budget)| Request {
            kind,
            frame,
            _budget: budget,
        })
        .map_err(|e| e.of_kind(kind))
}

/// Reads the rest of a frame whose header was accepted, then the end of the stream, within
/// the connection's body budget.
async fn read_body<'a>(
    recv: &mut quinn::RecvStream,
    state: &'a ConnState,
    header: [u8; FRAME_HEADER_LEN],
    total: usize,
) -> Result<(Vec<u8>, SemaphorePermit<'a>), Refusal> {
    // A frame is at most MAX_FRAME_LEN bytes, which fits a u32 and the budget, so it is
    // refused only while other streams of the connection hold their frames.
    let permits = u32::try_from(total).unwrap_or(u32::MAX);
    let budget = state
        .body_budget
        .try_acquire_many(permits)
        .map_err(|_| Refusal::Answer {
            kind: None,
            reply: Message::Busy(Busy {
                retry_after_ms: BUDGET_RETRY_MS,
            }),
        })?;
    let mut frame = vec![0u8; total];
    frame[..FRAME_HEADER_LEN].copy_from_slice(&header);
    read_exactly(recv, &mut frame[FRAME_HEADER_LEN..]).await?;
    match recv.read_to_end(0).await {
        Ok(_) => Ok((frame, budget)),
        Err(quinn::ReadToEndError::TooLong) => Err(Refusal::malformed(
            "bytes after the frame: a request stream carries exactly one frame, then FIN",
        )),
        Err(quinn::ReadToEndError::Read(e)) => Err(Refusal::Broken(e)),
    }
}

/// Fills `buf`, or says how much of it the stream held before it ended.
async fn read_exactly(recv: &mut quinn::RecvStream, buf: &mut [u8]) -> Result<(), Refusal> {
    match recv.read_exact(buf).await {
        Ok(()) => Ok(()),
        Err(quinn::ReadExactError::FinishedEarly(got)) => Err(DecodeError::Truncated {
            needed: buf.len() as u64,
            available: got as u64,
        }
        .into()),
        Err(quinn::ReadExactError::ReadError(e)) => Err(Refusal::Broken(e)),
    }
}

/// Refuses, from the header alone, a kind this connection may not send: a reply that only
/// the server sends (`unexpected`), an admin request from a gate or a gate request from an
/// admin (`forbidden`).
fn kind_refusal(kind: MessageKind, state: &ConnState) -> Option<Message> {
    use MessageKind as K;
    let is_request = matches!(
        kind,
        K::Hello | K::Event | K::Enroll | K::UpdateHealth | K::Revoke
    );
    if !is_request {
        return Some(error(
            ErrorCode::Unexpected,
            format!("{} is not a request a server accepts", kind.name()),
        ));
    }
    if kind.is_admin() && !state.is_admin {
        return Some(error(
            ErrorCode::Forbidden,
            format!("{} needs an admin certificate", kind.name()),
        ));
    }
    if !kind.is_admin() && state.is_admin {
        return Some(error(
            ErrorCode::Forbidden,
            format!(
                "{} needs a gate certificate; admin connections send no hello and no events",
                kind.name()
            ),
        ));
    }
    None
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
    // The registry's market, never the Hello's word alone (they are equal here): a gate
    // cannot be sent to, or served as, another market.
    if let Some(answer) = served_elsewhere(info.market, version, ctx) {
        info!(gate = %hello.gate, market = %info.market, "gate redirected: market not served here");
        return answer;
    }
    let greeted = Greeted {
        gate: hello.gate,
        market: info.market,
        version,
    };
    if state.hello.get_or_init(|| greeted).gate != hello.gate {
        return error(
            ErrorCode::Unexpected,
            "this connection already said hello as another gate".to_owned(),
        );
    }
    info!(gate = %hello.gate, firmware = %PeerText(&hello.firmware), "gate connected");
    let config = ctx.engine.config();
    Message::HelloAck(HelloAck {
        version,
        embedding_dim: u32::try_from(config.dim).unwrap_or(u32::MAX),
        model: config.model.clone(),
        max_frame_len: u32::try_from(gatewarden_protocol::MAX_GATE_FRAME_LEN).unwrap_or(u32::MAX),
    })
}

async fn on_event(event: Event, state: &ConnState, ctx: &Ctx) -> Message {
    let Some(greeted) = state.hello.get() else {
        return error(
            ErrorCode::HelloRequired,
            "send Hello on the first stream before any event".to_owned(),
        );
    };
    let gate = &greeted.gate;
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
    // The market may have moved to another node since the Hello, or the gate to another
    // market (the registry's record is read per event, from the in-memory cache, as the
    // engine itself does when deciding): then this node no longer decides its events
    // (cluster::MarketDirectory says what a lease must guarantee).
    let market = ctx
        .engine
        .store()
        .gate(*gate)
        .map_or(greeted.market, |info| info.market);
    if let Some(answer) = served_elsewhere(market, greeted.version, ctx) {
        debug!(gate = %gate, seq = event.seq, market = %market, "event redirected");
        return answer;
    }
    match ctx.engine.submit(event).await {
        Reply::Verdict(v) => Message::Verdict(v),
        Reply::Busy(b) => Message::Busy(b),
        Reply::Error(e) => Message::Error(e),
    }
}

/// The answer for a gate of `market` when this node does not serve it: a `Redirect` on a
/// version-2 connection, `shutting_down` naming the node on a version-1 one (which knows it as
/// "reconnect, possibly to another node, and retry with the same seq"). `None` when the market
/// is served here.
fn served_elsewhere(market: MarketId, version: u16, ctx: &Ctx) -> Option<Message> {
    let redirect = match ctx.markets.owner(market) {
        Ownership::Here => return None,
        Ownership::Elsewhere(node) => Redirect {
            market,
            node: node.name.clone(),
            addresses: node.addresses.clone(),
            retry_after_ms: 0,
        },
        Ownership::Unowned { retry_after } => Redirect {
            market,
            node: String::new(),
            addresses: Vec::new(),
            retry_after_ms: u32::try_from(retry_after.as_millis())
                .unwrap_or(MAX_RETRY_AFTER_MS)
                .clamp(1, MAX_RETRY_AFTER_MS),
        },
    };
    ctx.stats.redirected.fetch_add(1, Ordering::Relaxed);
    if version >= Redirect::MIN_VERSION {
        return Some(Message::Redirect(redirect));
    }
    let text = if redirect.node.is_empty() {
        format!(
            "no node serves market {market} right now; reconnect in {} ms and retry with the \
             same seq",
            redirect.retry_after_ms
        )
    } else {
        format!(
            "market {market} is served by node {} at {}, not here; reconnect there and retry \
             with the same seq",
            redirect.node,
            redirect.addresses.join(", ")
        )
    };
    Some(error(ErrorCode::ShuttingDown, text))
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
        Ok(Err(e)) => {
            let code = e.wire_code();
            if code.is_transient() {
                warn!(error = %e, "admin request failed");
            }
            error(code, e.to_string())
        }
        Err(_) => error(ErrorCode::Internal, "admin request failed".to_owned()),
    }
}

fn error(code: ErrorCode, message: String) -> Message {
    // ErrorReply::new bounds the text to what the wire allows.
    Message::Error(ErrorReply::new(code, message))
}
