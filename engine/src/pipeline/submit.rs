//! The way in: [`Pipeline::submit`] checks an event, claims its key and queues it, and hands
//! back a [`Submission`] to wait on. It never blocks and never touches SQLite, so it may run
//! on an async task; whether a key was recorded before is settled by a worker.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use gatewarden_protocol::{ErrorCode, ErrorReply, Event};

use super::{EventIdentity, Job, Pipeline, Reply, Responder, Shared};

impl Pipeline {
    /// Submits one event. Invalid events and overload are answered at once; others after their
    /// record is durable (or, for a retry of a recorded event, with the recorded verdict).
    pub(crate) fn submit(&self, event: Event) -> Submission {
        match self.accept(event) {
            Ok(rx) => Submission(State::Waiting(rx)),
            Err(reply) => Submission(State::Ready(Some(reply))),
        }
    }

    fn accept(&self, event: Event) -> Result<oneshot::Receiver<Reply>, Reply> {
        let shared = &self.shared;
        let gate = shared.store.gate(event.gate).ok_or_else(|| {
            refuse(
                ErrorCode::UnknownGate,
                format!("gate {} is not registered", event.gate),
            )
        })?;
        check_face(shared, &event)?;
        let Some(claim) = shared.keys.claim((event.gate, event.seq)) else {
            // The same key is being decided right now; its retry will find the record.
            let (depth, capacity) = self.queue_fill();
            return Err(Reply::Busy(shared.busy(depth, capacity)));
        };
        let (tx, rx) = oneshot::channel();
        let now = shared.clock.instant();
        let job = Job {
            identity: EventIdentity::of(&shared.store, &event),
            may_be_recorded: shared.keys.may_be_recorded(event.gate, event.seq),
            event,
            gate,
            enqueued: now,
            deadline: now + shared.deadline,
            reply: Responder::new(tx, claim),
        };
        self.enqueue(job);
        Ok(rx)
    }
}

/// The face rules every event must meet before it is queued.
fn check_face(shared: &Shared, event: &Event) -> Result<(), Reply> {
    let Some(face) = &event.face else {
        return Ok(());
    };
    let rules = &shared.face;
    if face.model != rules.model {
        return Err(refuse(
            ErrorCode::UnknownModel,
            format!(
                "face model {:?} is not the gallery's model {:?}",
                face.model, rules.model
            ),
        ));
    }
    if face.embedding.len() != rules.dim {
        return Err(refuse(
            ErrorCode::DimensionMismatch,
            format!(
                "embedding has {} values; the gallery's dimension is {}",
                face.embedding.len(),
                rules.dim
            ),
        ));
    }
    if face.embedding.iter().any(|v| !v.is_finite()) {
        return Err(refuse(
            ErrorCode::InvalidValue,
            "embedding contains a non-finite value".to_owned(),
        ));
    }
    if face.embedding.iter().all(|v| *v == 0.0) {
        // A zero vector has no direction: no similarity to anyone can be computed.
        return Err(refuse(
            ErrorCode::InvalidValue,
            "embedding is all zeros".to_owned(),
        ));
    }
    Ok(())
}

fn refuse(code: ErrorCode, message: String) -> Reply {
    Reply::Error(ErrorReply::new(code, message))
}

/// A pending reply: `.await` it, or [`wait`](Submission::wait) for it.
#[must_use = "a submission does nothing unless its reply is awaited"]
pub struct Submission(State);

enum State {
    Ready(Option<Reply>),
    Waiting(oneshot::Receiver<Reply>),
}

impl Submission {
    /// Blocks until the reply arrives.
    pub fn wait(self) -> Reply {
        match self.0 {
            State::Ready(reply) => reply.unwrap_or_else(lost_reply),
            State::Waiting(rx) => rx.recv().unwrap_or_else(|_| lost_reply()),
        }
    }
}

impl Future for Submission {
    type Output = Reply;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        match &mut self.0 {
            State::Ready(reply) => Poll::Ready(reply.take().unwrap_or_else(lost_reply)),
            State::Waiting(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or_else(|_| lost_reply())),
        }
    }
}

/// A reply channel closed without an answer: only if a pipeline thread died. The gate retries
/// and finds the record if there is one.
fn lost_reply() -> Reply {
    Shared::internal_error("the engine lost this event's reply; retry with the same seq".to_owned())
}
