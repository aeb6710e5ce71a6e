//! Publishes gathered across callers: a few lanes each take every publish queued while they were
//! busy and store them with one statement, so that many callers publishing one event each share
//! one commit (and one WAL flush) instead of paying one apiece.
//!
//! Each caller gets the answers for its own events, in order; the earliest due time is announced
//! before anyone is answered.

use std::sync::Arc;

use herald_core::{Clock, Event, Published, StoreError};
use tokio::sync::oneshot;

use crate::Db;

/// How many lanes publish at once (each holds one connection while it does).
const LANES: usize = 4;

/// The most events one statement takes.
const MAX_EVENTS: usize = 2_000;

/// One caller's publish.
struct Job {
    events: Vec<Event>,
    reply: oneshot::Sender<Result<Vec<Published>, StoreError>>,
}

/// The lanes' queue. The lanes end once it is dropped and they have answered what they took.
pub(crate) struct Publisher {
    jobs: async_channel::Sender<Job>,
}

fn stopped() -> StoreError {
    StoreError::Unavailable {
        message: "the PostgreSQL store's publishers have stopped (the runtime is shutting down)".into(),
        source: None,
    }
}

impl Publisher {
    pub(crate) fn start(db: Arc<Db>, clock: Clock) -> Self {
        let (jobs, queue) = async_channel::unbounded();
        for _ in 0..LANES {
            tokio::spawn(lane(db.clone(), clock, queue.clone()));
        }
        Publisher { jobs }
    }

    pub(crate) async fn publish(&self, events: Vec<Event>) -> Result<Vec<Published>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job { events, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn lane(db: Arc<Db>, clock: Clock, queue: async_channel::Receiver<Job>) {
    while let Ok(first) = queue.recv().await {
        let mut count = first.events.len();
        let mut jobs = vec![first];
        while count < MAX_EVENTS {
            match queue.try_recv() {
                Ok(job) => {
                    count += job.events.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let mut events = Vec::with_capacity(count);
        let mut replies = Vec::with_capacity(jobs.len());
        for job in jobs {
            replies.push((job.events.len(), job.reply));
            events.extend(job.events);
        }
        match db.publish(&events, clock.now()).await {
            Ok(out) => {
                let mut out = out.into_iter();
                for (n, reply) in replies {
                    // A caller that stopped waiting does not undo the publish.
                    let _ = reply.send(Ok(out.by_ref().take(n).collect()));
                }
            }
            Err(e) => {
                for (_, reply) in replies {
                    let _ = reply.send(Err(copy_error(&e)));
                }
            }
        }
    }
}

/// A copy of a store error for each caller of a failed statement (the source chain is flattened
/// into the message, since it cannot be cloned).
fn copy_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
        other => StoreError::Unavailable {
            message: other.to_string(),
            source: None,
        },
    }
}
