//! The open API connections and what each is doing, so that one stalled
//! too long can be timed out and, at the cap, the one that has waited
//! longest for a request can be closed to make room.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::limits::Limits;

/// What a connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a request header, since the connection opened or since
    /// the first byte of a request after an idle spell.
    Head = 0,
    /// A request is being answered (its body read, its response written).
    Busy = 1,
    /// Between requests: a response is done, no byte of the next one yet.
    Idle = 2,
    /// Handed over to another protocol (exec); no longer HTTP.
    Upgraded = 3,
    /// Being closed by the server.
    Closing = 4,
}

impl Phase {
    fn from_u8(value: u8) -> Phase {
        match value {
            0 => Phase::Head,
            1 => Phase::Busy,
            2 => Phase::Idle,
            3 => Phase::Upgraded,
            _ => Phase::Closing,
        }
    }

    /// Whether the connection may be closed to make room: it has no
    /// request in hand.
    fn sheddable(self) -> bool {
        matches!(self, Phase::Head | Phase::Idle)
    }
}

/// Connections as they began to wait for a request, oldest first, with
/// which of their phases that was. An entry is stale once its connection has moved on (or closed):
/// shedding skips it, and stale ones are dropped whenever the queue has
/// doubled since they last were, so it stays in proportion to the
/// connections open.
#[derive(Debug, Default)]
struct WaitQueue {
    entries: VecDeque<(Weak<Slot>, u64)>,
    /// Entries kept by the last clean-up.
    kept: usize,
}

impl WaitQueue {
    fn push(&mut self, slot: Weak<Slot>, turn: u64) {
        self.entries.push_back((slot, turn));
        if self.entries.len() > 2 * self.kept + 64 {
            self.entries.retain(|(slot, turn)| current(slot, *turn).is_some());
            self.kept = self.entries.len();
        }
    }

    /// The oldest connection still waiting on its client, taken out with
    /// the stale entries before it. One whose bytes the server has not read
    /// yet (a new connection its task has not run for) is waiting on the
    /// server, not the client: it keeps its entry, moved to the back.
    fn pop_oldest(&mut self) -> Option<Arc<Slot>> {
        for _ in 0..self.entries.len() {
            let (weak, turn) = self.entries.pop_front()?;
            let Some(slot) = current(&weak, turn) else { continue };
            if slot.awaiting_client.load(Ordering::Acquire) {
                return Some(slot);
            }
            self.entries.push_back((weak, turn));
        }
        None
    }
}

/// The entry's connection, if it is still in the phase it entered at `turn`.
fn current(slot: &Weak<Slot>, turn: u64) -> Option<Arc<Slot>> {
    let slot = slot.upgrade()?;
    let phase = Phase::from_u8(slot.phase.load(Ordering::Acquire));
    (phase.sheddable() && slot.turn.load(Ordering::Acquire) == turn).then_some(slot)
}

/// One open connection's entry.
#[derive(Debug)]
pub struct Slot {
    id: u64,
    epoch: Instant,
    phase: AtomicU8,
    /// When the phase began, in milliseconds since `epoch`.
    since_ms: AtomicU64,
    /// How many phases it has entered.
    turn: AtomicU64,
    /// Whether the server's last read found nothing: it waits on the client.
    awaiting_client: AtomicBool,
    waiting: Arc<Mutex<WaitQueue>>,
    /// Itself, for its entries in `waiting`.
    this: Weak<Slot>,
    /// Woken when the server closes the connection to make room.
    pub shed: Notify,
}

impl Slot {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The phase and when it began.
    pub fn state(&self) -> (Phase, Instant) {
        let phase = Phase::from_u8(self.phase.load(Ordering::Acquire));
        (phase, self.epoch + Duration::from_millis(self.since_ms.load(Ordering::Acquire)))
    }

    /// Moves from `from` to `to`, unless the connection has moved on
    /// (the server may be closing it as it starts a request); whether it did.
    fn shift(&self, from: Phase, to: Phase) -> bool {
        if self.phase.compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return false;
        }
        let turn = self.turn.fetch_add(1, Ordering::AcqRel) + 1;
        self.since_ms.store(self.now_ms(), Ordering::Release);
        if to.sheddable() {
            lock(&self.waiting).push(Weak::clone(&self.this), turn);
        }
        true
    }

    /// A request header arrived.
    pub fn request_started(&self) {
        // From Idle: a pipelined request whose header was read while the
        // last response was still going out.
        let _ = self.shift(Phase::Head, Phase::Busy) || self.shift(Phase::Idle, Phase::Busy);
    }

    /// Its response is done.
    pub fn response_done(&self) {
        self.shift(Phase::Busy, Phase::Idle);
    }

    /// It now speaks another protocol.
    pub fn upgraded(&self) {
        self.shift(Phase::Busy, Phase::Upgraded);
    }

    /// A read of the socket found bytes (after an idle spell, a new
    /// request has begun) or found none (the client has sent nothing more).
    pub fn read(&self, found_bytes: bool) {
        self.awaiting_client.store(!found_bytes, Ordering::Release);
        if found_bytes && self.phase.load(Ordering::Relaxed) == Phase::Idle as u8 {
            self.shift(Phase::Idle, Phase::Head);
        }
    }

    /// When the connection times out in its current phase, and which
    /// phase that is; `None` while it has a request in hand.
    pub fn deadline(&self, limits: &Limits) -> Option<(Phase, Instant)> {
        let (phase, since) = self.state();
        match phase {
            Phase::Head => Some((phase, since + limits.header_timeout)),
            Phase::Idle => Some((phase, since + limits.idle_timeout)),
            Phase::Busy | Phase::Upgraded | Phase::Closing => None,
        }
    }
}

/// What [`Table::admit`] decided for a new connection.
#[derive(Debug)]
pub enum Admission {
    /// Admitted; the table had room.
    Admitted(Arc<Slot>),
    /// Admitted after closing the connection that waited longest for a request.
    AdmittedAfterShedding(Arc<Slot>),
    /// Refused: the table is full of connections with requests in hand.
    Refused,
}

#[derive(Debug, Default)]
struct Slots {
    by_id: HashMap<u64, Arc<Slot>>,
    /// How many of them are being closed to make room.
    closing: usize,
}

/// Every open connection.
#[derive(Debug)]
pub struct Table {
    epoch: Instant,
    next_id: AtomicU64,
    slots: Mutex<Slots>,
    waiting: Arc<Mutex<WaitQueue>>,
    /// Woken as connections being shed close.
    shed_closed: Notify,
}

impl Default for Table {
    fn default() -> Table {
        Table {
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            slots: Mutex::default(),
            waiting: Arc::default(),
            shed_closed: Notify::new(),
        }
    }
}

impl Table {
    /// Admits a new connection if fewer than `max` are open, else makes
    /// room by shedding the one waiting longest for a request.
    pub fn admit(&self, max: usize) -> Admission {
        let mut slots = lock(&self.slots);
        let mut shed = false;
        while !shed && slots.by_id.len() - slots.closing >= max {
            let Some(victim) = lock(&self.waiting).pop_oldest() else {
                return Admission::Refused;
            };
            let (phase, _) = victim.state();
            if victim.shift(phase, Phase::Closing) {
                victim.shed.notify_one();
                slots.closing += 1;
                shed = true;
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new_cyclic(|this| Slot {
            id,
            epoch: self.epoch,
            phase: AtomicU8::new(Phase::Busy as u8),
            since_ms: AtomicU64::new(0),
            turn: AtomicU64::new(0),
            awaiting_client: AtomicBool::new(false),
            waiting: Arc::clone(&self.waiting),
            this: Weak::clone(this),
            shed: Notify::new(),
        });
        slot.shift(Phase::Busy, Phase::Head);
        slots.by_id.insert(id, Arc::clone(&slot));
        if shed {
            Admission::AdmittedAfterShedding(slot)
        } else {
            Admission::Admitted(slot)
        }
    }

    /// Forgets a connection once its socket is closed.
    pub fn remove(&self, slot: &Slot) {
        let mut slots = lock(&self.slots);
        if slots.by_id.remove(&slot.id).is_some() && slot.state().0 == Phase::Closing {
            slots.closing -= 1;
            self.shed_closed.notify_waiters();
        }
    }

    /// Waits until at most `most` shed connections are still closing, so
    /// that shedding frees files as fast as accepting takes them.
    pub async fn settle(&self, most: usize) {
        loop {
            let closed = self.shed_closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if lock(&self.slots).closing <= most {
                return;
            }
            closed.await;
        }
    }

    /// How many connections are open (those being closed included).
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.slots).by_id.len()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_victim_is_the_longest_waiting_without_a_request() {
        let table = Table::default();
        let admit = || match table.admit(4) {
            Admission::Admitted(slot) => slot,
            other => panic!("room expected, got {other:?}"),
        };
        let (busy, upgraded, head, idle) = (admit(), admit(), admit(), admit());
        busy.request_started();
        upgraded.request_started();
        upgraded.upgraded();
        idle.request_started();
        tokio::time::sleep(Duration::from_millis(5)).await;
        idle.response_done();
        for slot in [&head, &idle] {
            slot.read(false);
        }
        // `head` waited since it opened, before `idle` went idle.
        let Admission::AdmittedAfterShedding(newest) = table.admit(4) else { panic!("one is shed") };
        assert_eq!(head.state().0, Phase::Closing);
        let Admission::AdmittedAfterShedding(newer) = table.admit(4) else { panic!("another is shed") };
        assert_eq!(idle.state().0, Phase::Closing);
        // The newest has sent a header the server has not read yet: it is
        // passed over, and with nothing else to shed a new one is refused.
        newer.read(false);
        let Admission::AdmittedAfterShedding(_) = table.admit(4) else { panic!("a third is shed") };
        assert_eq!(newer.state().0, Phase::Closing);
        assert_eq!(newest.state().0, Phase::Head);
        table.remove(&head);
        table.remove(&idle);
        table.remove(&newer);
        assert!(matches!(table.admit(4), Admission::Refused));
        assert_eq!(busy.state().0, Phase::Busy);
        assert_eq!(upgraded.state().0, Phase::Upgraded);
    }

    #[test]
    fn the_wait_queue_stays_in_proportion_without_shedding() {
        let table = Table::default();
        let Admission::Admitted(slot) = table.admit(10) else { panic!() };
        for _ in 0..10_000 {
            slot.request_started();
            slot.response_done();
        }
        assert!(lock(&table.waiting).entries.len() < 100);
        for _ in 0..10_000 {
            let Admission::Admitted(gone) = table.admit(10) else { panic!() };
            table.remove(&gone);
        }
        assert!(lock(&table.waiting).entries.len() < 100);
    }

    #[tokio::test]
    async fn at_the_cap_a_waiting_connection_makes_room_and_a_busy_table_refuses() {
        let table = Table::default();
        let Admission::Admitted(first) = table.admit(2) else { panic!("room for the first") };
        let Admission::Admitted(second) = table.admit(2) else { panic!("room for the second") };
        first.read(false);
        second.request_started();
        let Admission::AdmittedAfterShedding(third) = table.admit(2) else { panic!("the first is shed") };
        assert_eq!(first.state().0, Phase::Closing);
        assert_eq!(table.len(), 3, "the shed one is open until its socket closes");
        table.remove(&first);
        third.request_started();
        assert!(matches!(table.admit(2), Admission::Refused));
        assert_eq!(table.len(), 2);
    }

    #[tokio::test]
    async fn phases_follow_requests_and_set_deadlines() {
        let limits = Limits {
            max_connections: 10,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
        };
        let table = Table::default();
        let Admission::Admitted(slot) = table.admit(10) else { panic!() };
        let (phase, deadline) = slot.deadline(&limits).unwrap();
        assert_eq!(phase, Phase::Head);
        assert!(deadline <= Instant::now() + limits.header_timeout);
        slot.read(true);
        assert_eq!(slot.state().0, Phase::Head);
        slot.request_started();
        assert_eq!(slot.deadline(&limits), None);
        slot.read(true);
        assert_eq!(slot.state().0, Phase::Busy, "a body's bytes do not start a request");
        slot.response_done();
        assert_eq!(slot.deadline(&limits).unwrap().0, Phase::Idle);
        slot.read(true);
        assert_eq!(slot.state().0, Phase::Head);
        slot.request_started();
        slot.upgraded();
        slot.response_done();
        assert_eq!(slot.state().0, Phase::Upgraded);
        assert_eq!(slot.deadline(&limits), None);
    }
}
