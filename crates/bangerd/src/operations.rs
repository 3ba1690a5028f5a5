//! Operations: long work (pulls, imports, later builds and creates) that a
//! request starts and returns at once. Each has an id, step and byte
//! progress, and an outcome; every change is published as an event, and the
//! start and the outcome are recorded in the database so history survives
//! restarts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use banger_api::{Event, Operation, OperationKind, OperationResult, OperationState, Progress, Timestamp};
use tokio::sync::broadcast;

use crate::db::Db;
use crate::error::Error;

/// Byte progress is published at most this often.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// How many events a slow subscriber may fall behind before it skips.
const EVENT_BUFFER: usize = 1024;

/// The daemon's event bus.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
}

impl Events {
    /// A bus with no subscribers yet.
    pub fn new() -> Events {
        Events { tx: broadcast::channel(EVENT_BUFFER).0 }
    }

    /// Sends an event to every current subscriber.
    pub fn publish(&self, event: Event) {
        // No subscribers is not an error.
        let _ = self.tx.send(event);
    }

    /// A new subscription, seeing events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

/// The running operations, and the record of finished ones.
pub struct Operations {
    running: Mutex<HashMap<String, Tracked>>,
    events: Events,
    db: Arc<Db>,
}

struct Tracked {
    op: Operation,
    last_published: Instant,
}

impl Operations {
    /// Marks operations a previous daemon left running as failed: their work
    /// died with it.
    pub fn open(db: Arc<Db>, events: Events) -> Result<Arc<Operations>, Error> {
        for mut op in db.operations(u32::MAX)? {
            if op.state == OperationState::Running {
                op.state = OperationState::Failed;
                op.error = Some(banger_api::ApiError {
                    code: banger_api::ErrorCode::Internal,
                    message: "interrupted: the daemon stopped while it ran".into(),
                });
                op.finished_at = Some(Timestamp::now());
                db.put_operation(&op)?;
            }
        }
        Ok(Arc::new(Operations { running: Mutex::new(HashMap::new()), events, db }))
    }

    /// Starts tracking an operation with `steps_total` steps, the first named `first_step`.
    pub fn start(
        self: &Arc<Self>,
        kind: OperationKind,
        target: &str,
        steps_total: u32,
        first_step: &str,
    ) -> Result<OperationHandle, Error> {
        let op = Operation {
            id: format!("op-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            kind,
            target: target.to_owned(),
            state: OperationState::Running,
            progress: Progress {
                step: first_step.to_owned(),
                steps_done: 0,
                steps_total,
                bytes_done: 0,
                bytes_total: None,
            },
            error: None,
            result: None,
            created_at: Timestamp::now(),
            finished_at: None,
        };
        self.db.put_operation(&op)?;
        tracing::info!(op = %op.id, kind = ?kind, target, "operation started");
        self.events.publish(Event::Operation { operation: op.clone() });
        let id = op.id.clone();
        self.lock().insert(id.clone(), Tracked { op, last_published: Instant::now() });
        Ok(OperationHandle { ops: Arc::clone(self), id })
    }

    /// An operation by id, running or recorded.
    pub fn get(&self, id: &str) -> Result<Option<Operation>, Error> {
        if let Some(t) = self.lock().get(id) {
            return Ok(Some(t.op.clone()));
        }
        self.db.operation(id)
    }

    /// Recent operations, newest first, running ones with their live progress.
    pub fn list(&self, limit: u32) -> Result<Vec<Operation>, Error> {
        let mut ops = self.db.operations(limit)?;
        let running = self.lock();
        for op in &mut ops {
            if let Some(t) = running.get(&op.id) {
                *op = t.op.clone();
            }
        }
        Ok(ops)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tracked>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, id: &str, force_publish: bool, change: impl FnOnce(&mut Operation)) {
        let mut running = self.lock();
        let Some(tracked) = running.get_mut(id) else {
            return;
        };
        change(&mut tracked.op);
        if force_publish || tracked.last_published.elapsed() >= PROGRESS_INTERVAL {
            tracked.last_published = Instant::now();
            self.events.publish(Event::Operation { operation: tracked.op.clone() });
        }
    }

    fn finish(&self, id: &str, outcome: Result<Option<OperationResult>, banger_api::ApiError>) {
        let Some(Tracked { mut op, .. }) = self.lock().remove(id) else {
            return;
        };
        op.finished_at = Some(Timestamp::now());
        match outcome {
            Ok(result) => {
                op.state = OperationState::Succeeded;
                op.progress.steps_done = op.progress.steps_total;
                op.progress.step = "done".into();
                op.result = result;
                tracing::info!(op = %op.id, target = %op.target, "operation succeeded");
            }
            Err(error) => {
                op.state = OperationState::Failed;
                tracing::warn!(op = %op.id, target = %op.target, error = %error.message, "operation failed");
                op.error = Some(error);
            }
        }
        if let Err(e) = self.db.put_operation(&op) {
            tracing::error!(op = %op.id, error = %e, "cannot record operation outcome");
        }
        self.events.publish(Event::Operation { operation: op });
    }
}

/// The running side of one operation: the work reports progress through it
/// and ends it exactly once.
pub struct OperationHandle {
    ops: Arc<Operations>,
    id: String,
}

impl OperationHandle {
    /// The operation's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The current state, as a client would see it.
    pub fn snapshot(&self) -> Option<Operation> {
        self.ops.lock().get(&self.id).map(|t| t.op.clone())
    }

    /// A cloneable reporter for work running on another thread.
    pub fn progress_reporter(&self) -> ProgressReporter {
        ProgressReporter { ops: Arc::clone(&self.ops), id: self.id.clone() }
    }

    /// Moves on to the next step.
    pub fn step(&self, name: &str) {
        self.progress_reporter().step(name)
    }

    /// Reports bytes done within the current step.
    pub fn bytes(&self, done: u64, total: Option<u64>) {
        self.progress_reporter().bytes(done, total)
    }

    /// Ends the operation with its outcome: what it made, if anything, or why it failed.
    pub fn finish(self, outcome: Result<Option<OperationResult>, &Error>) {
        self.ops.finish(&self.id, outcome.map_err(Error::to_api));
    }
}

/// Reports an operation's progress; it cannot end the operation.
#[derive(Clone)]
pub struct ProgressReporter {
    ops: Arc<Operations>,
    id: String,
}

impl ProgressReporter {
    /// Moves on to the next step.
    pub fn step(&self, name: &str) {
        self.ops.update(&self.id, true, |op| {
            let p = &mut op.progress;
            p.steps_done = (p.steps_done + 1).min(p.steps_total.saturating_sub(1));
            p.step = name.to_owned();
            p.bytes_done = 0;
            p.bytes_total = None;
        });
    }

    /// Reports bytes done within the current step.
    pub fn bytes(&self, done: u64, total: Option<u64>) {
        self.ops.update(&self.id, false, |op| {
            op.progress.bytes_done = done;
            op.progress.bytes_total = total;
        });
    }
}

impl Drop for OperationHandle {
    /// Work that ends without an outcome (a panic, a dropped task) still
    /// ends its operation; after `finish` this does nothing.
    fn drop(&mut self) {
        let error = Error::Internal("the operation ended without an outcome".into());
        self.ops.finish(&self.id, Err(error.to_api()));
    }
}

/// Now, as RFC 3339 UTC with seconds, for rows that keep timestamps as text.
pub fn now_rfc3339() -> String {
    Timestamp::now().to_string()
}
