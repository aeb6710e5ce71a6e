//! The in-memory store: the fast path for an in-process bus. Not durable.
//!
//! Events live in a slab; each subscription keeps three collections of slab references (a heap of
//! scheduled deliveries by due time, ready queues by priority, a queue of leases by expiry).
//! Entries are removed lazily: an entry is acted on only if the delivery it names is still in the
//! state the entry was pushed for.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;

use super::*;
use crate::event::{IdHashState, Priority};
use crate::topic::Topic;

/// Builds a [`MemoryStore`].
///
/// ```
/// use herald_core::MemoryStore;
/// use std::time::Duration;
/// let store = MemoryStore::builder().retain_for(Duration::from_secs(600)).retain_max(10_000).build();
/// ```
#[derive(Debug, Clone)]
pub struct MemoryStoreBuilder {
    clock: Option<Clock>,
    retain_for: Duration,
    retain_max: usize,
    shards: Option<usize>,
}

/// Up to this many open deliveries, a shard's backlog is always exact (see `MemoryStore::settle`).
const BACKLOG_EXACT: u64 = 64;

/// The most shards a memory store has: a delivery's lease token names its shard in three bits.
const MAX_SHARDS: usize = 8;

impl MemoryStoreBuilder {
    /// Keep finished events this long (default: one hour).
    pub fn retain_for(mut self, d: Duration) -> Self {
        self.retain_for = d;
        self
    }

    /// Keep at most this many finished events, dropping the oldest first (default: 100,000).
    pub fn retain_max(mut self, n: usize) -> Self {
        self.retain_max = n;
        self
    }

    /// Use this clock (default: a new [`Clock`]).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Splits the store into `n` shards, each behind its own lock (clamped to 1..=8; default: the
    /// machine's parallelism, at most 8).
    ///
    /// Each thread publishes into a shard of its own (a tokio worker thread: the shard of its
    /// index in the runtime, modulo the shard count), and a worker claims from its own thread's
    /// shard first, so that threads publishing and handling at once do not queue on one lock or
    /// pass one store's memory between their cores. Everything else is the same as with one
    /// shard, except that two orders become per shard:
    /// - among due deliveries, a worker starts with the shard whose most urgent delivery has the
    ///   highest priority, then takes from that shard in priority and due order;
    /// - `retain_max` evicts the oldest finished events of the shard that goes over the limit.
    ///
    /// `shards(1)` keeps one order for the whole store.
    ///
    /// ```
    /// use herald_core::MemoryStore;
    /// let store = MemoryStore::builder().shards(1).build();
    /// ```
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = Some(n.clamp(1, MAX_SHARDS));
        self
    }

    /// The store.
    pub fn build(self) -> MemoryStore {
        let clock = self.clock.unwrap_or_default();
        let n = self
            .shards
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, MAX_SHARDS)));
        let shards = (0..n)
            .map(|i| Shard {
                state: Mutex::new(State {
                    retain_for_ms: i64::try_from(self.retain_for.as_millis()).unwrap_or(i64::MAX),
                    retain_max: self.retain_max,
                    shard: u32::try_from(i).unwrap_or(0),
                    ..State::default()
                }),
                open: AtomicU64::new(0),
                ready: AtomicU32::new(0),
                timer: AtomicI64::new(i64::MAX),
            })
            .collect();
        MemoryStore {
            wake: WakeupHub::with_clock(clock),
            clock,
            shards,
            subs_lock: Mutex::new(()),
            dedup: Mutex::new(()),
            finished: AtomicUsize::new(0),
        }
    }
}

/// An in-process store: fast, bounded by retention, lost when the process ends.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use herald_core::{Herald, MemoryStore};
/// let herald = Herald::builder().store(MemoryStore::new()).build().await?;
/// # herald.shutdown(std::time::Duration::from_secs(1)).await; Ok(()) }
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    clock: Clock,
    shards: Box<[Shard]>,
    /// Held while the subscription list changes, so that every shard sees the same changes in
    /// the same order.
    subs_lock: Mutex<()>,
    /// Held from the search of the other shards for an event's id or key until its own shard
    /// has it, so that two publishes of one id or key cannot both miss the other.
    dedup: Mutex<()>,
    /// Finished events in all shards (see `State::enforce_retention`).
    finished: AtomicUsize,
    wake: WakeupHub,
}

/// A part of the store with its own lock, and what others read of it without that lock. A shard
/// holds whole events: an event, its deliveries and their history are in the shard it was
/// published into.
#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    state: Mutex<State>,
    /// Its open deliveries (the store's backlog is the sum).
    open: AtomicU64,
    /// Bit `p`: a subscription has a ready delivery of priority `p` here.
    ready: AtomicU32,
    /// The earliest due time of a scheduled delivery or end of a lease here (Unix ms; `i64::MAX`
    /// for none). It may be early (a stale entry), never late.
    timer: AtomicI64,
}

impl Shard {
    /// Whether a claim here might find something at `now`. Read after the claimer's due mark was
    /// cleared: a publish that makes work here writes this before it marks the subscription due.
    fn may_have_work(&self, now: Timestamp) -> bool {
        self.ready.load(Ordering::SeqCst) != 0 || self.timer.load(Ordering::SeqCst) <= now.as_millis()
    }

    /// The highest priority ready here, if any.
    fn top(&self) -> Option<u32> {
        let bits = self.ready.load(Ordering::SeqCst);
        (bits != 0).then(|| 31 - bits.leading_zeros())
    }
}

impl MemoryStore {
    /// A store with the default retention (one hour, 100,000 finished events).
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Configures a store.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            clock: None,
            retain_for: Duration::from_secs(3600),
            retain_max: 100_000,
            shards: None,
        }
    }

    /// This thread's shard.
    fn home(&self) -> usize {
        crate::home::place(self.shards.len())
    }

    /// Where `event` goes: this thread's shard. And whether the other shards must first be asked
    /// whether they hold a live event with its id or its key: not for an event without a key
    /// whose id the runtime has just made.
    fn place(&self, event: &Event) -> (usize, bool) {
        let fresh = event.take_fresh();
        if self.shards.len() == 1 {
            return (0, false);
        }
        (self.home(), !fresh || event.key().is_some())
    }

    /// The id of a live event in a shard other than `except` with `event`'s id or key. The caller
    /// holds `dedup` until its own shard has the event.
    fn held_elsewhere(&self, event: &Event, except: usize) -> Option<EventId> {
        (0..self.shards.len()).filter(|&i| i != except).find_map(|i| {
            let st = self.lock(i);
            if let Some(&holder) = event.key().and_then(|k| st.keys.get(k)) {
                return Some(holder);
            }
            st.by_id.get(&event.id(), &st.slots[..]).map(|_| event.id())
        })
    }

    /// Publishes into shard `i` an event that another shard may already hold (see `place`).
    fn publish_checked(
        &self,
        i: usize,
        event: Event,
        first_id: Option<DeliveryId>,
        now: Timestamp,
        wake: &mut Announce,
    ) -> Published {
        let _checking = self.dedup.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = self.held_elsewhere(&event, i) {
            return Published::Duplicate { id };
        }
        self.insert_into(i, event, first_id, now, wake)
    }

    /// Stores `event` in shard `i` (see `State::insert`), in one hold of its lock.
    fn insert_into(
        &self,
        i: usize,
        event: Event,
        first_id: Option<DeliveryId>,
        now: Timestamp,
        wake: &mut Announce,
    ) -> Published {
        let mut guard = self.lock(i);
        let st = &mut *guard;
        let (out, _) = st.insert(event, first_id, now, wake);
        let evicted = self.settle(i, st, now);
        drop(guard);
        drop(evicted);
        out
    }

    /// The shard a lease's token names.
    fn shard_of(&self, lease: &Lease) -> Option<usize> {
        let i = (lease.token & SHARD_BITS) as usize;
        (i < self.shards.len()).then_some(i)
    }

    /// Shard `i`'s state. Whoever holds more than one shard's lock takes them in shard order.
    fn lock(&self, i: usize) -> MutexGuard<'_, State> {
        // A panic while the lock was held cannot leave a half-applied change behind that later
        // calls would trip on worse than the panic itself did; carry on with the state as it is.
        self.shards[i]
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies retention and publishes shard `i`'s backlog and summaries; returns the evicted
    /// records, for the caller to drop after it has released the lock (freeing their memory is
    /// most of an eviction's cost).
    #[must_use = "drop the evicted records after unlocking"]
    fn settle(&self, i: usize, state: &mut State, now: Timestamp) -> Evicted {
        state.enforce_retention(now, &self.finished);
        let shard = &self.shards[i];
        // Written only when they change: other threads read them, at every publish for the
        // backlog. A backlog over `BACKLOG_EXACT` is written when it has moved by 16 or by a
        // sixty-fourth, whichever is more, so that the publishers of other threads do not miss
        // this line at every publish (exact up to 1,024, it was 2.5% of two threads' time).
        let open = state.counts.open();
        let shown = shard.open.load(Ordering::Relaxed);
        if open != shown && (open.min(shown) < BACKLOG_EXACT || open.abs_diff(shown) >= (open / 64).max(16)) {
            shard.open.store(open, Ordering::Relaxed);
        }
        if self.shards.len() > 1 {
            let (ready, timer) = state.summary();
            if shard.ready.load(Ordering::Relaxed) != ready {
                shard.ready.store(ready, Ordering::SeqCst);
            }
            if shard.timer.load(Ordering::Relaxed) != timer {
                shard.timer.store(timer, Ordering::SeqCst);
            }
        }
        if state.evicted.is_empty() {
            return Evicted(Vec::new());
        }
        let spare = SPARE_EVICTED.take();
        Evicted(std::mem::replace(&mut state.evicted, spare))
    }
}

thread_local! {
    /// An empty list with room, to take the place of the store's list of evicted records when a
    /// caller takes them: a new list for every eviction grew past a kilobyte, and each such
    /// allocation made glibc consolidate its small free chunks.
    static SPARE_EVICTED: std::cell::Cell<Vec<Rec>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Records taken out of the store under its lock, freed when this is dropped after the lock.
struct Evicted(Vec<Rec>);

impl Drop for Evicted {
    fn drop(&mut self) {
        let mut list = std::mem::take(&mut self.0);
        if list.capacity() == 0 || list.capacity() > 4096 {
            return;
        }
        list.clear();
        // `try_with`: a thread being torn down just frees the list.
        let _ = SPARE_EVICTED.try_with(|spare| {
            let old = spare.replace(list);
            if old.capacity() > 0 {
                spare.set(old);
            }
        });
    }
}

/// The due times a publish announces: the earliest due now and the earliest ahead, both, since
/// "due now" alone would hide the later time from a timer with nothing else to wait for.
#[derive(Default)]
struct Announce {
    now: Option<Timestamp>,
    ahead: Option<Timestamp>,
}

impl MemoryStore {
    /// Announces the due times of a publish; `handled_by` is not told of what is due now.
    fn announce(&self, wake: Announce, now: Timestamp, handled_by: Option<ListenerKey>) {
        if let Some(t) = wake.now {
            self.wake.send_except(Wakeup::Due(t), now, handled_by);
        }
        if let Some(t) = wake.ahead {
            self.wake.send_at(Wakeup::Due(t), now);
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Ref {
    slot: u32,
    gen: u32,
    idx: u16,
}

/// Due deliveries in claim order: one FIFO per priority, each kept in due-time order. Almost
/// every push lands at the back (due now, or promoted in due order), so pushes and pops are O(1);
/// a delivery due earlier than the back (a retry promoted after newer publishes) is inserted in
/// place.
#[derive(Debug, Default)]
struct ReadyQueue {
    levels: [VecDeque<(Timestamp, Ref)>; 11],
    /// Bit `p` set: level `p` is not empty.
    occupied: u16,
}

impl ReadyQueue {
    fn push(&mut self, priority: Priority, due: Timestamp, at: Ref) {
        let p = usize::from(priority.get().min(10));
        let level = &mut self.levels[p];
        match level.back() {
            Some(&(last, _)) if last > due => {
                let i = level.partition_point(|&(d, _)| d <= due);
                level.insert(i, (due, at));
            }
            _ => level.push_back((due, at)),
        }
        self.occupied |= 1 << p;
    }

    fn pop(&mut self) -> Option<Ref> {
        if self.occupied == 0 {
            return None;
        }
        let p = 15 - self.occupied.leading_zeros() as usize;
        let level = &mut self.levels[p];
        let (_, at) = level.pop_front()?;
        if level.is_empty() {
            self.occupied &= !(1 << p);
        }
        Some(at)
    }

    fn is_empty(&self) -> bool {
        self.occupied == 0
    }

    fn drain(&mut self) -> impl Iterator<Item = Ref> + '_ {
        self.occupied = 0;
        self.levels.iter_mut().flat_map(|l| l.drain(..).map(|(_, at)| at))
    }
}

/// Leases by expiry: `(until, delivery, token)`, earliest first. A lease's end is the time of its
/// claim or extension plus a length that is the same for every call of one runtime, so almost
/// every push lands at the back, and pushes and pops are O(1) (a binary heap cost two hundred
/// instructions per delivery); a push that ends earlier than the back is inserted in place.
#[derive(Debug, Default)]
struct LeaseQueue(VecDeque<(Timestamp, Ref, u64)>);

impl LeaseQueue {
    fn push(&mut self, until: Timestamp, at: Ref, token: u64) {
        // By the end alone: leases that end in the same millisecond keep their order of arrival.
        match self.0.back() {
            Some(&(last, _, _)) if last > until => {
                let i = self.0.partition_point(|&(u, _, _)| u <= until);
                self.0.insert(i, (until, at, token));
            }
            _ => self.0.push_back((until, at, token)),
        }
    }

    fn peek(&self) -> Option<&(Timestamp, Ref, u64)> {
        self.0.front()
    }

    fn pop(&mut self) -> Option<(Timestamp, Ref, u64)> {
        self.0.pop_front()
    }

    fn iter(&self) -> impl Iterator<Item = &(Timestamp, Ref, u64)> + '_ {
        self.0.iter()
    }

    fn drain(&mut self) -> impl Iterator<Item = (Timestamp, Ref, u64)> + '_ {
        self.0.drain(..)
    }
}

#[derive(Debug)]
struct Sub {
    spec: SubscriptionSpec,
    removed: bool,
    scheduled: BinaryHeap<Reverse<(Timestamp, Ref)>>,
    ready: ReadyQueue,
    leases: LeaseQueue,
}

#[derive(Debug)]
struct Slot {
    gen: u32,
    rec: Option<Rec>,
}

#[derive(Debug)]
struct Rec {
    event: Event,
    deliveries: Fanout,
    open: u32,
    /// Whether the event has an idempotency key (read without the event, see `State::remove`).
    keyed: bool,
    finished_at: Option<Timestamp>,
}

/// A delivery: 64 bytes, inline in its event's record.
///
/// Its attempt history lives in `Detail::history`, except for the common case of a first
/// attempt that is running or succeeded: while `history` is empty (or there is no `Detail`), that
/// attempt is `started_at` and, once it succeeded, `until`. A claim then allocates nothing, and
/// the history is written out the first time anything else happens to the delivery.
#[derive(Debug)]
struct D {
    id: DeliveryId,
    due: Timestamp,
    /// While active: when the lease runs out. Succeeded with its one attempt inline: when that
    /// attempt ended.
    until: Timestamp,
    /// When the one inline attempt started (see above).
    started_at: Timestamp,
    detail: Option<Box<Detail>>,
    sub: u32,
    attempts: u32,
    /// The low half of the lease token of the current claim; the high half is the slot, which the
    /// delivery's place in the slab already says.
    token: u32,
    status: DeliveryStatus,
}

impl D {
    /// Whether the lease with this token holds the delivery.
    fn leased_by(&self, token: u64) -> bool {
        self.status == DeliveryStatus::Active && u64::from(self.token) == token & 0xffff_ffff
    }

    /// Whether the history is the inline attempt (if any) rather than `Detail::history`.
    fn history_inline(&self) -> bool {
        self.detail.as_ref().is_none_or(|x| x.history.is_empty())
    }

    /// The inline attempt, when the history is inline and an attempt started.
    fn inline_attempt(&self) -> Option<Attempt> {
        if !self.history_inline() || self.attempts == 0 {
            return None;
        }
        let mut a = Attempt::started(self.attempts, self.started_at);
        if self.status == DeliveryStatus::Succeeded {
            a.finished_at = Some(self.until);
            a.outcome = Some(AttemptOutcome::Succeeded);
        }
        Some(a)
    }

    /// The detail, made if there is none yet.
    fn detail_mut(&mut self) -> &mut Detail {
        self.detail.get_or_insert_with(Default::default)
    }

    /// The history, written out of the inline attempt first if need be.
    fn history_mut(&mut self) -> &mut Vec<Attempt> {
        let inline = self.inline_attempt();
        let history = &mut self.detail_mut().history;
        history.extend(inline);
        history
    }

    /// A copy of the history.
    fn history(&self) -> Vec<Attempt> {
        match &self.detail {
            Some(x) if !x.history.is_empty() => x.history.clone(),
            _ => self.inline_attempt().into_iter().collect(),
        }
    }
}

/// An event's deliveries. Almost every event has one, kept inline: a separate allocation per event
/// costs both time and about 80 bytes of memory per scheduled event.
#[derive(Debug)]
enum Fanout {
    None,
    One(D),
    Many(Box<[D]>),
}

impl std::ops::Deref for Fanout {
    type Target = [D];
    fn deref(&self) -> &[D] {
        match self {
            Fanout::None => &[],
            Fanout::One(d) => std::slice::from_ref(d),
            Fanout::Many(ds) => ds,
        }
    }
}

impl std::ops::DerefMut for Fanout {
    fn deref_mut(&mut self) -> &mut [D] {
        match self {
            Fanout::None => &mut [],
            Fanout::One(d) => std::slice::from_mut(d),
            Fanout::Many(ds) => ds,
        }
    }
}

impl FromIterator<D> for Fanout {
    fn from_iter<I: IntoIterator<Item = D>>(iter: I) -> Self {
        let mut iter = iter.into_iter();
        let Some(first) = iter.next() else { return Fanout::None };
        let Some(second) = iter.next() else {
            return Fanout::One(first);
        };
        let mut all = vec![first, second];
        all.extend(iter);
        Fanout::Many(all.into_boxed_slice())
    }
}

#[derive(Debug, Default)]
struct Detail {
    history: Vec<Attempt>,
    last_error: Option<String>,
    reply: Option<Bytes>,
}

/// Events by id, in id order: lookups by binary search, pages (newest first) by range. Ids are
/// time-ordered, so almost every insert appends. (A B-tree map cost a thousand instructions per
/// publish, every insert at its right edge scanning full nodes; a hash map beside the order cost
/// 25 bytes per event.)
///
/// Each entry names its record's slot and the slot's generation at the time. A removal does not
/// touch the index: the slot's generation moves on, which is what makes the entry a tombstone
/// (searching for the entry of each evicted event was a sixth of a publish's cost once retention
/// was full). Tombstones are swept from the front as the oldest events go and compacted when they
/// are the majority.
#[derive(Debug, Default)]
struct IdIndex {
    order: VecDeque<(EventId, u32, u32)>,
    dead: usize,
}

/// Whether a slot still holds the record an index entry was made for.
trait Slab {
    fn holds(&self, slot: u32, gen: u32) -> bool;
}

impl Slab for [Slot] {
    fn holds(&self, slot: u32, gen: u32) -> bool {
        self.get(slot as usize).is_some_and(|s| s.gen == gen && s.rec.is_some())
    }
}

impl IdIndex {
    fn len(&self) -> usize {
        self.order.len() - self.dead
    }

    fn position(&self, id: &EventId) -> Option<usize> {
        self.locate(id).ok()
    }

    /// Where `id` is, or would go (`Err`), if that is among the last few entries: ids made by
    /// concurrent publishers reach the store a little out of order, so a new id is usually just
    /// before the last one or two. `None`: look further.
    fn near_back(&self, id: &EventId) -> Option<Result<usize, usize>> {
        let len = self.order.len();
        for i in (len.saturating_sub(8)..len).rev() {
            let x = &self.order[i].0;
            if x == id {
                return Some(Ok(i));
            }
            if x < id {
                return Some(Err(i + 1));
            }
        }
        None
    }

    /// The slot of the live event `id`.
    fn get(&self, id: &EventId, slab: &(impl Slab + ?Sized)) -> Option<u32> {
        let (_, slot, gen) = self.order[self.position(id)?];
        slab.holds(slot, gen).then_some(slot)
    }

    /// Where `id` is (`Ok`, perhaps a tombstone) or would go (`Err`): one search for both the
    /// duplicate check and the insertion of a new event (see `put`).
    fn locate(&self, id: &EventId) -> Result<usize, usize> {
        match self.order.back() {
            None => Err(0),
            Some((last, ..)) if last < id => Err(self.order.len()),
            Some(_) => match self.near_back(id) {
                Some(found) => found,
                None => self.order.binary_search_by(|(x, ..)| x.cmp(id)),
            },
        }
    }

    /// Whether `locate` found a live event.
    fn is_live(&self, spot: Result<usize, usize>, slab: &(impl Slab + ?Sized)) -> bool {
        spot.is_ok_and(|i| self.order.get(i).is_some_and(|&(_, slot, gen)| slab.holds(slot, gen)))
    }

    /// Stores `id` at the spot `locate` gave for it (nothing changed the index since), for the
    /// record in `slot` at generation `gen`.
    fn put(&mut self, spot: Result<usize, usize>, id: EventId, slot: u32, gen: u32) {
        match spot {
            Ok(i) => {
                // The id of a removed event, published again: its tombstone comes back to life.
                if let Some(entry) = self.order.get_mut(i).filter(|e| e.0 == id) {
                    *entry = (id, slot, gen);
                    self.dead -= 1;
                }
            }
            Err(i) if i >= self.order.len() => self.order.push_back((id, slot, gen)),
            Err(i) => self.order.insert(i, (id, slot, gen)),
        }
    }

    /// Notes that an event in the index was removed from the slab (whose slot has moved to its
    /// next generation).
    fn forget_one(&mut self, slab: &(impl Slab + ?Sized)) {
        self.dead += 1;
        while self.order.front().is_some_and(|&(_, slot, gen)| !slab.holds(slot, gen)) {
            self.order.pop_front();
            self.dead -= 1;
        }
        if self.dead > 1024 && self.dead > self.order.len() / 2 {
            self.order.retain(|&(_, slot, gen)| slab.holds(slot, gen));
            self.dead = 0;
        }
    }

    /// Live events with ids before `before` (all when `None`), newest first.
    fn newest_first<'a>(
        &'a self,
        before: Option<EventId>,
        slab: &'a (impl Slab + ?Sized),
    ) -> impl Iterator<Item = (EventId, u32)> + 'a {
        let end = before.map_or(self.order.len(), |b| self.order.partition_point(|&(x, ..)| x < b));
        self.order
            .range(..end)
            .rev()
            .filter(|&&(_, slot, gen)| slab.holds(slot, gen))
            .map(|&(id, slot, _)| (id, slot))
    }
}

#[derive(Debug, Default)]
struct State {
    subs: Vec<Sub>,
    // Hashed like ids (a per-process seed), not with SipHash: a claim looks its subscription up.
    sub_ids: HashMap<SubscriptionName, u32, IdHashState>,
    routes: HashMap<Topic, Arc<[u32]>, IdHashState>,
    /// The last topic routed and its subscriptions.
    last_route: Option<(Topic, Arc<[u32]>)>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_id: IdIndex,
    /// Records evicted under the lock, dropped after it.
    evicted: Vec<Rec>,
    keys: HashMap<String, EventId>,
    /// Finished events, oldest first: when, where, and the event's id (an eviction then reads
    /// the event's slot, not the event: the oldest records are long out of the caches, and each
    /// line read in the lock holds everyone else up).
    finished: VecDeque<(Timestamp, Ref, EventId)>,
    counts: StatusCounts,
    unrouted: u64,
    next_token: u64,
    /// This shard's number, in the low bits of every lease token it gives out.
    shard: u32,
    /// How many finished events this shard last counted into the store's total.
    reported_finished: usize,
    /// How long finished events are kept, in milliseconds.
    retain_for_ms: i64,
    retain_max: usize,
}

/// The bits of a lease token that name its shard (see `State::take`).
const SHARD_BITS: u64 = 0b111;

/// The record and delivery index `at` names, if it still names one. A free function over the
/// slab, so that callers can hold the status counts at the same time.
fn delivery_mut(slots: &mut [Slot], at: Ref) -> Option<(&mut Rec, usize)> {
    let slot = slots.get_mut(at.slot as usize)?;
    if slot.gen != at.gen {
        return None;
    }
    let rec = slot.rec.as_mut()?;
    (usize::from(at.idx) < rec.deliveries.len()).then_some((rec, usize::from(at.idx)))
}

fn set_status(counts: &mut StatusCounts, d: &mut D, to: DeliveryStatus) {
    *counts.slot_mut(d.status) -= 1;
    *counts.slot_mut(to) += 1;
    d.status = to;
}

/// What became of a delivery taken off a ready queue for a claim.
enum Take {
    Claimed(Claimed),
    /// Its event expired: the delivery is now expired, and its record is to be closed.
    Expired,
    /// It was no longer pending (a stale entry).
    Gone,
}

impl State {
    fn sub_index(&self, name: &SubscriptionName) -> Result<u32, StoreError> {
        self.sub_ids
            .get(name)
            .copied()
            .ok_or_else(|| StoreError::UnknownSubscription(name.clone()))
    }

    /// The subscriptions `topic` routes to, taken out of `last_route` for the caller to put back
    /// (see `insert`): a clone would write the count that every publishing thread writes.
    #[inline]
    fn take_route(&mut self, topic: &Topic) -> (Topic, Arc<[u32]>) {
        match self.last_route.take() {
            Some((last, r)) if last == *topic => (last, r),
            _ => {
                let r = self.route(topic);
                self.last_route.take().unwrap_or_else(|| (topic.clone(), r))
            }
        }
    }

    fn route(&mut self, topic: &Topic) -> Arc<[u32]> {
        // Runs of the same topic are the common case: compare with the last one before hashing.
        if let Some((last, r)) = &self.last_route {
            if last == topic {
                return r.clone();
            }
        }
        if let Some(r) = self.routes.get(topic) {
            self.last_route = Some((topic.clone(), r.clone()));
            return r.clone();
        }
        let matched: Arc<[u32]> = self
            .subs
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.removed && s.spec.pattern.matches(topic))
            .filter_map(|(i, _)| u32::try_from(i).ok())
            .collect();
        // The cache is bounded so that a stream of distinct topics cannot grow it without end.
        if self.routes.len() >= 10_000 {
            self.routes.clear();
        }
        self.routes.insert(topic.clone(), matched.clone());
        self.last_route = Some((topic.clone(), matched.clone()));
        matched
    }

    fn rec(&self, at: Ref) -> Option<&Rec> {
        let slot = self.slots.get(at.slot as usize)?;
        if slot.gen != at.gen {
            return None;
        }
        slot.rec.as_ref()
    }

    /// The delivery a lease names: its token carries the slot (see `claim`), so no index is needed.
    fn find_leased(&self, lease: &Lease) -> Option<Ref> {
        self.find_in_slot(u32::try_from(lease.token >> 32).ok()?, lease.delivery)
    }

    /// A delivery by id alone: a scan, for the rare administrative call (`requeue`).
    fn find_delivery(&self, id: DeliveryId) -> Option<Ref> {
        self.by_id
            .newest_first(None, &self.slots[..])
            .find_map(|(_, slot)| self.find_in_slot(slot, id))
    }

    fn find_in_slot(&self, slot: u32, id: DeliveryId) -> Option<Ref> {
        let s = self.slots.get(slot as usize)?;
        let rec = s.rec.as_ref()?;
        let idx = rec.deliveries.iter().position(|d| d.id == id)?;
        Some(Ref {
            slot,
            gen: s.gen,
            idx: u16::try_from(idx).ok()?,
        })
    }

    fn push_ready(&mut self, at: Ref, sub: u32, priority: Priority, due: Timestamp) {
        if let Some(s) = self.subs.get_mut(sub as usize) {
            s.ready.push(priority, due, at);
        }
    }

    /// Records that a delivery of `at` finished; when it was the last open one, the event is done.
    fn close_one(&mut self, at: Ref, now: Timestamp) {
        let Some(slot) = self.slots.get_mut(at.slot as usize) else {
            return;
        };
        let Some(rec) = slot.rec.as_mut() else { return };
        rec.open = rec.open.saturating_sub(1);
        if rec.open == 0 {
            rec.finished_at = Some(now);
            self.finished.push_back((now, at, rec.event.id()));
        }
    }

    fn reopen_one(&mut self, at: Ref) {
        if let Some((rec, _)) = delivery_mut(&mut self.slots, at) {
            rec.open += 1;
            rec.finished_at = None;
        }
    }

    /// Moves deliveries of `sub` that are due at `now` from the scheduled heap to the ready heap.
    fn promote(&mut self, sub: u32, now: Timestamp) {
        loop {
            let Some(s) = self.subs.get_mut(sub as usize) else {
                return;
            };
            let Some(&Reverse((due, at))) = s.scheduled.peek() else {
                return;
            };
            if due > now {
                return;
            }
            s.scheduled.pop();
            let counts = &mut self.counts;
            let Some((rec, i)) = delivery_mut(&mut self.slots, at) else {
                continue;
            };
            let d = &mut rec.deliveries[i];
            if !matches!(d.status, DeliveryStatus::Scheduled | DeliveryStatus::Retrying) || d.due != due {
                continue;
            }
            let priority = rec.event.priority();
            set_status(counts, d, DeliveryStatus::Pending);
            self.push_ready(at, sub, priority, due);
        }
    }

    /// Returns to the ready heap the deliveries of `sub` whose lease ran out at `now`, and drops
    /// lease entries that no longer hold.
    fn reclaim(&mut self, sub: u32, now: Timestamp) {
        loop {
            let Some(s) = self.subs.get_mut(sub as usize) else {
                return;
            };
            let Some(&(until, at, token)) = s.leases.peek() else {
                return;
            };
            let live = self.holds_lease(at, token, until);
            if live && until > now {
                return;
            }
            if let Some(s) = self.subs.get_mut(sub as usize) {
                s.leases.pop();
            }
            if !live {
                continue;
            }
            let counts = &mut self.counts;
            let Some((rec, i)) = delivery_mut(&mut self.slots, at) else {
                continue;
            };
            let priority = rec.event.priority();
            let d = &mut rec.deliveries[i];
            set_status(counts, d, DeliveryStatus::Pending);
            let due = d.due;
            if let Some(last) = d.history_mut().last_mut() {
                last.finished_at = Some(now);
                last.outcome = Some(AttemptOutcome::LeaseExpired);
                last.error = Some("the lease ran out before an outcome was recorded".into());
            }
            self.push_ready(at, sub, priority, due);
        }
    }

    /// Whether the lease entry `(until, at, token)` still holds the delivery. An extension pushes a
    /// new entry with the same token, so an entry holds only if its end is the delivery's.
    fn holds_lease(&self, at: Ref, token: u64, until: Timestamp) -> bool {
        self.rec(at)
            .and_then(|rec| rec.deliveries.get(usize::from(at.idx)))
            .is_some_and(|d| d.leased_by(token) && d.until == until)
    }

    /// Whether the scheduled entry `(due, at)` still names a delivery waiting for that time.
    fn waits_until(&self, at: Ref, due: Timestamp) -> bool {
        self.rec(at)
            .and_then(|rec| rec.deliveries.get(usize::from(at.idx)))
            .is_some_and(|d| matches!(d.status, DeliveryStatus::Scheduled | DeliveryStatus::Retrying) && d.due == due)
    }

    fn next_scheduled(&mut self, sub: u32) -> Option<Timestamp> {
        loop {
            let s = self.subs.get_mut(sub as usize)?;
            let &Reverse((due, at)) = s.scheduled.peek()?;
            if self.waits_until(at, due) {
                return Some(due);
            }
            self.subs.get_mut(sub as usize)?.scheduled.pop();
        }
    }

    /// The earliest due time or lease end of `sub` strictly after `after`. The tops of the heaps
    /// answer it, unless one is not after `after` (a lease that ran out and was not reclaimed yet,
    /// or `after` ahead of the clock): then the heaps are scanned.
    fn next_after(&mut self, sub: u32, after: Timestamp) -> Option<Timestamp> {
        self.reclaim(sub, Timestamp::EPOCH);
        let scheduled = self.next_scheduled(sub);
        let s = self.subs.get(sub as usize)?;
        let lease = s.leases.peek().map(|(until, _, _)| *until);
        if scheduled.is_none_or(|t| t > after) && lease.is_none_or(|t| t > after) {
            return scheduled.into_iter().chain(lease).min();
        }
        let scheduled = s
            .scheduled
            .iter()
            .filter(|Reverse((due, at))| *due > after && self.waits_until(*at, *due))
            .map(|Reverse((due, _))| *due);
        let leases = s
            .leases
            .iter()
            .filter(|(until, at, token)| *until > after && self.holds_lease(*at, *token, *until))
            .map(|(until, _, _)| *until);
        scheduled.chain(leases).min()
    }

    /// Removes the event `id` at `at`.
    fn remove(&mut self, at: Ref, id: EventId) {
        let Some(slot) = self.slots.get_mut(at.slot as usize) else {
            return;
        };
        if slot.gen != at.gen {
            return;
        }
        let Some(rec) = slot.rec.take() else { return };
        slot.gen = slot.gen.wrapping_add(1);
        self.free.push(at.slot);
        self.by_id.forget_one(&self.slots[..]);
        if rec.keyed {
            if let Some(key) = rec.event.key() {
                if self.keys.get(key) == Some(&id) {
                    self.keys.remove(key);
                }
            }
        }
        if rec.deliveries.is_empty() {
            self.unrouted = self.unrouted.saturating_sub(1);
        }
        for d in rec.deliveries.iter() {
            *self.counts.slot_mut(d.status) -= 1;
        }
        self.evicted.push(rec);
    }

    /// Removes the oldest finished event if it finished before `before` (or unconditionally when
    /// `before` is `None`). Returns whether an entry was taken off the queue.
    fn pop_finished(&mut self, before: Option<Timestamp>) -> Option<bool> {
        let &(at_time, at, id) = self.finished.front()?;
        if before.is_some_and(|b| at_time >= b) {
            return None;
        }
        self.finished.pop_front();
        let current = self.rec(at).is_some_and(|r| r.finished_at == Some(at_time));
        if current {
            self.remove(at, id);
        }
        Some(current)
    }

    /// Evicts what has been finished longer than `retain_for`, then, while the store's finished
    /// events (`total`, over all shards) are more than `retain_max`, this shard's oldest.
    ///
    /// Nothing more when this shard's count of finished events has not moved (a publish, mostly):
    /// a shard whose own count grew is the one that brings the total back under the limit, and
    /// `total` is a line every shard writes, which a read at every publish would miss.
    fn enforce_retention(&mut self, now: Timestamp, total: &AtomicUsize) {
        let cutoff = Timestamp::from_millis(now.as_millis().saturating_sub(self.retain_for_ms));
        while self.pop_finished(Some(cutoff)).is_some() {}
        let Some(all) = self.report_finished(total) else {
            return;
        };
        if all > self.retain_max {
            let mut over = all - self.retain_max;
            while over > 0 && self.pop_finished(None).is_some() {
                over -= 1;
            }
            self.report_finished(total);
        }
    }

    /// Brings the store's count of finished events up to date with this shard's; returns the
    /// count, or `None` when this shard's has not changed since it last reported. With one shard
    /// the count is this shard's own.
    fn report_finished(&mut self, total: &AtomicUsize) -> Option<usize> {
        let mine = self.finished.len();
        let before = self.reported_finished;
        self.reported_finished = mine;
        if mine > before {
            Some(total.fetch_add(mine - before, Ordering::Relaxed) + (mine - before))
        } else if mine < before {
            Some(total.fetch_sub(before - mine, Ordering::Relaxed) - (before - mine))
        } else {
            None
        }
    }

    /// What others read of this shard without its lock (see `Shard`): the priorities ready, and
    /// the earliest due time or lease end (Unix ms).
    fn summary(&self) -> (u32, i64) {
        let mut ready = 0;
        let mut timer = i64::MAX;
        for s in &self.subs {
            ready |= u32::from(s.ready.occupied);
            if let Some(Reverse((due, _))) = s.scheduled.peek() {
                timer = timer.min(due.as_millis());
            }
            if let Some((until, _, _)) = s.leases.peek() {
                timer = timer.min(until.as_millis());
            }
        }
        (ready, timer)
    }

    fn record(&self, slot: u32, with_attempts: bool, now: Timestamp) -> Option<EventRecord> {
        let rec = self.slots.get(slot as usize)?.rec.as_ref()?;
        let deliveries = rec
            .deliveries
            .iter()
            .map(|d| {
                // A scheduled delivery whose time has come is pending, whether or not a claim has
                // moved it yet.
                let status = match d.status {
                    DeliveryStatus::Scheduled if d.due <= now => DeliveryStatus::Pending,
                    s => s,
                };
                let mut r = DeliveryRecord::new(d.id, self.subs[d.sub as usize].spec.name.clone(), status, d.due);
                r.attempt_count = d.attempts;
                if let Some(detail) = &d.detail {
                    r.last_error = detail.last_error.clone();
                    r.reply = detail.reply.clone();
                }
                if with_attempts {
                    r.attempts = d.history();
                }
                r
            })
            .collect();
        Some(EventRecord::new(rec.event.clone(), deliveries))
    }

    /// Records one outcome; returns whether it was applied and what to announce.
    fn apply(&mut self, o: Outcome, now: Timestamp) -> (Completion, Option<Wakeup>) {
        let Some(at) = self.find_leased(&o.lease) else {
            return (Completion::Stale, None);
        };
        let counts = &mut self.counts;
        let Some((rec, i)) = delivery_mut(&mut self.slots, at) else {
            return (Completion::Stale, None);
        };
        let answered = rec.event.reply_to().is_some().then(|| rec.event.id());
        let priority = rec.event.priority();
        let d = &mut rec.deliveries[i];
        if !d.leased_by(o.lease.token) {
            return (Completion::Stale, None);
        }
        let sub = d.sub;
        enum Next {
            Finished,
            Scheduled(Timestamp),
            Ready(Timestamp),
        }
        let (next, wakeup) = match o.verdict {
            Verdict::Succeeded { reply } => {
                if d.history_inline() {
                    // The attempt stays inline: its end goes where the lease's was (see `D`).
                    d.until = o.finished_at;
                } else if let Some(a) = d.history_mut().last_mut() {
                    a.finished_at = Some(o.finished_at);
                    a.outcome = Some(AttemptOutcome::Succeeded);
                }
                if reply.is_some() {
                    d.detail_mut().reply = reply;
                }
                set_status(counts, d, DeliveryStatus::Succeeded);
                (Next::Finished, answered.map(Wakeup::Answered))
            }
            Verdict::Retry { at: due, error } => {
                if let Some(a) = d.history_mut().last_mut() {
                    a.finished_at = Some(o.finished_at);
                    a.outcome = Some(AttemptOutcome::Failed);
                    a.error = Some(error.clone());
                }
                d.detail_mut().last_error = Some(error);
                d.due = due;
                set_status(counts, d, DeliveryStatus::Retrying);
                (Next::Scheduled(due), Some(Wakeup::Due(due)))
            }
            Verdict::Dead { reason } => {
                if let Some(a) = d.history_mut().last_mut() {
                    a.finished_at = Some(o.finished_at);
                    a.outcome = Some(AttemptOutcome::Dead);
                    a.error = Some(reason.clone());
                }
                d.detail_mut().last_error = Some(reason);
                set_status(counts, d, DeliveryStatus::Dead);
                (Next::Finished, answered.map(Wakeup::Answered))
            }
            Verdict::Released => {
                d.history_mut().pop();
                d.attempts = d.attempts.saturating_sub(1);
                set_status(counts, d, DeliveryStatus::Pending);
                (Next::Ready(d.due), Some(Wakeup::Due(d.due)))
            }
        };
        match next {
            Next::Finished => self.close_one(at, now),
            Next::Scheduled(due) => {
                if let Some(s) = self.subs.get_mut(sub as usize) {
                    s.scheduled.push(Reverse((due, at)));
                }
            }
            Next::Ready(due) => self.push_ready(at, sub, priority, due),
        }
        (Completion::Applied, wakeup)
    }

    /// Stores one event and fans it out; notes in `wake` the due time to announce. The first
    /// delivery takes `first_id` if given (made before the lock was taken: an id reads the clock).
    /// Returns, for a stored event, its slot and generation too.
    fn insert(
        &mut self,
        event: Event,
        first_id: Option<DeliveryId>,
        now: Timestamp,
        wake: &mut Announce,
    ) -> (Published, Option<(u32, u32)>) {
        if let Some(&first) = event.key().and_then(|k| self.keys.get(k)) {
            return (Published::Duplicate { id: first }, None);
        }
        // A publish retried with the same event id (a client that lost the answer) stores
        // nothing new.
        let spot = self.by_id.locate(&event.id());
        if self.by_id.is_live(spot, &self.slots[..]) {
            return (Published::Duplicate { id: event.id() }, None);
        }
        let (route_topic, routes) = self.take_route(event.topic());
        let id = event.id();
        let due = event.deliver_at();
        let immediate = due <= now;
        let status = if immediate {
            DeliveryStatus::Pending
        } else {
            DeliveryStatus::Scheduled
        };
        let mut first_id = first_id;
        let deliveries: Fanout = routes
            .iter()
            .map(|&sub| D {
                id: first_id.take().unwrap_or_else(|| DeliveryId::for_event(id)),
                sub,
                status,
                attempts: 0,
                due,
                token: 0,
                until: Timestamp::EPOCH,
                started_at: Timestamp::EPOCH,
                detail: None,
            })
            .collect();
        let n = u32::try_from(deliveries.len()).unwrap_or(u32::MAX);
        let key = event.key().map(str::to_owned);
        let priority = event.priority();
        let (slot, gen) = self.alloc(Rec {
            event,
            deliveries,
            open: n,
            keyed: key.is_some(),
            finished_at: None,
        });
        self.by_id.put(spot, id, slot, gen);
        if let Some(key) = key {
            self.keys.insert(key, id);
        }
        *self.counts.slot_mut(status) += u64::from(n);
        for (idx, &sub) in routes.iter().enumerate() {
            let at = Ref {
                slot,
                gen,
                idx: u16::try_from(idx).unwrap_or(u16::MAX),
            };
            if immediate {
                self.push_ready(at, sub, priority, due);
            } else if let Some(s) = self.subs.get_mut(sub as usize) {
                s.scheduled.push(Reverse((due, at)));
            }
        }
        if n == 0 {
            self.unrouted += 1;
            if let Some(r) = self.slots[slot as usize].rec.as_mut() {
                r.finished_at = Some(now);
            }
            self.finished.push_back((now, Ref { slot, gen, idx: 0 }, id));
        } else {
            let earliest = if immediate { &mut wake.now } else { &mut wake.ahead };
            *earliest = Some(earliest.map_or(due, |e| e.min(due)));
        }
        self.last_route = Some((route_topic, routes));
        (Published::Stored { id, deliveries: n }, Some((slot, gen)))
    }

    /// Leases the delivery `at`, just taken off `sub`'s ready queue, until `lease_until`.
    #[inline(always)]
    fn take(
        &mut self,
        sub: u32,
        at: Ref,
        subscription: &SubscriptionName,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Take {
        // The token is the slot in its high half and, in its low half, a claim counter above the
        // shard's number: unique per claim of a delivery (fencing), and it leads `complete`
        // straight to the shard and the slot.
        self.next_token = self.next_token.wrapping_add(1);
        let token = (u64::from(at.slot) << 32) | (((self.next_token << 3) | u64::from(self.shard)) & 0xffff_ffff);
        let counts = &mut self.counts;
        let Some((rec, i)) = delivery_mut(&mut self.slots, at) else {
            return Take::Gone;
        };
        if rec.deliveries[i].status != DeliveryStatus::Pending {
            return Take::Gone;
        }
        if rec.event.is_expired_at(now) {
            set_status(counts, &mut rec.deliveries[i], DeliveryStatus::Expired);
            return Take::Expired;
        }
        let d = &mut rec.deliveries[i];
        set_status(counts, d, DeliveryStatus::Active);
        let attempt = d.attempts + 1;
        if attempt == 1 && d.history_inline() {
            // The common case: no allocation (see `D`).
            d.started_at = now;
        } else {
            d.history_mut().push(Attempt::started(attempt, now));
        }
        d.attempts = attempt;
        d.token = token as u32;
        d.until = lease_until;
        let claimed = Claimed::new(
            Lease { delivery: d.id, token },
            lease_until,
            subscription.clone(),
            rec.event.clone(),
            d.attempts,
            d.due,
        );
        if let Some(s) = self.subs.get_mut(sub as usize) {
            s.leases.push(lease_until, at, token);
        }
        Take::Claimed(claimed)
    }

    /// Whether `sub` has nothing due: no ready delivery, none scheduled whose time has come, no
    /// lease run out. A delivery published now is then the first that a claim would take.
    fn nothing_due(&self, sub: u32, now: Timestamp) -> bool {
        let Some(s) = self.subs.get(sub as usize) else {
            return false;
        };
        s.ready.is_empty()
            && s.scheduled.peek().is_none_or(|Reverse((due, _))| *due > now)
            && s.leases.peek().is_none_or(|(until, _, _)| *until > now)
    }

    /// Whether events on `topic` get a delivery for `sub`.
    fn routes_to(&mut self, topic: &Topic, sub: u32) -> bool {
        let (topic, routes) = self.take_route(topic);
        let routed = routes.contains(&sub);
        self.last_route = Some((topic, routes));
        routed
    }

    fn alloc(&mut self, rec: Rec) -> (u32, u32) {
        if let Some(slot) = self.free.pop() {
            let s = &mut self.slots[slot as usize];
            s.rec = Some(rec);
            return (slot, s.gen);
        }
        let slot = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        self.slots.push(Slot { gen: 0, rec: Some(rec) });
        (slot, 0)
    }
}

impl MemoryStore {
    /// Publishes `events` in order, each into its shard (see `place`), holding one shard's lock
    /// for a run of events that go to the same shard.
    fn publish_all(
        &self,
        events: impl IntoIterator<Item = Event>,
        first_id: Option<DeliveryId>,
        now: Timestamp,
        wake: &mut Announce,
    ) -> Vec<Published> {
        let events = events.into_iter();
        let mut out = Vec::with_capacity(events.size_hint().0);
        let mut held: Option<(usize, MutexGuard<'_, State>)> = None;
        let mut evicted = Vec::new();
        let mut first_id = first_id;
        for event in events {
            let (i, ask_others) = self.place(&event);
            if ask_others {
                // No other shard's lock is taken while one is held, except in shard order.
                if let Some((j, mut st)) = held.take() {
                    evicted.push(self.settle(j, &mut st, now));
                }
                out.push(self.publish_checked(i, event, first_id.take(), now, wake));
                continue;
            }
            let st = match &mut held {
                Some((j, st)) if *j == i => st,
                _ => {
                    if let Some((j, mut st)) = held.take() {
                        evicted.push(self.settle(j, &mut st, now));
                    }
                    &mut held.insert((i, self.lock(i))).1
                }
            };
            out.push(st.insert(event, first_id.take(), now, wake).0);
        }
        if let Some((j, mut st)) = held.take() {
            evicted.push(self.settle(j, &mut st, now));
        }
        drop(evicted);
        out
    }

    /// Claims up to `max` deliveries of `subscription` from shard `i` into `out`.
    fn claim_from(
        &self,
        i: usize,
        subscription: &SubscriptionName,
        max: usize,
        now: Timestamp,
        lease_until: Timestamp,
        out: &mut Vec<Claimed>,
    ) -> Result<(), StoreError> {
        let mut guard = self.lock(i);
        let st = &mut *guard;
        let sub = st.sub_index(subscription)?;
        st.reclaim(sub, now);
        st.promote(sub, now);
        let first = out.len();
        let mut expired = Vec::new();
        while out.len() - first < max {
            let Some(s) = st.subs.get_mut(sub as usize) else { break };
            let Some(at) = s.ready.pop() else { break };
            match st.take(sub, at, subscription, now, lease_until) {
                Take::Claimed(c) => out.push(c),
                Take::Expired => expired.push(at),
                Take::Gone => {}
            }
        }
        if !expired.is_empty() {
            metrics::counter!("herald_deliveries_expired_total").increment(expired.len() as u64);
        }
        for at in expired {
            st.close_one(at, now);
        }
        let evicted = self.settle(i, st, now);
        drop(guard);
        drop(evicted);
        Ok(())
    }

    /// With more than one shard: in each shard where a delivery or a lease may have come due at
    /// `now`, brings `subscription`'s up to date, so that their priorities count in `claim_order`.
    fn promote_come_due(&self, subscription: &SubscriptionName, now: Timestamp) {
        if self.shards.len() == 1 {
            return;
        }
        for (i, shard) in self.shards.iter().enumerate() {
            if shard.timer.load(Ordering::SeqCst) > now.as_millis() {
                continue;
            }
            let mut guard = self.lock(i);
            let st = &mut *guard;
            if let Ok(sub) = st.sub_index(subscription) {
                st.reclaim(sub, now);
                st.promote(sub, now);
            }
            let evicted = self.settle(i, st, now);
            drop(guard);
            drop(evicted);
        }
    }

    /// The shards a claim visits, in order: this thread's first, unless another has a more urgent
    /// delivery ready; then the others that may have work at `now`.
    fn claim_order(&self, now: Timestamp) -> impl Iterator<Item = usize> + '_ {
        let n = self.shards.len();
        let home = self.home();
        let urgent = (0..n)
            .filter(|&i| i != home)
            .filter_map(|i| Some((self.shards[i].top()?, i)))
            .max()
            .filter(|&(top, _)| self.shards[home].top().is_none_or(|h| top > h))
            .map(|(_, i)| i);
        urgent
            .into_iter()
            .chain(std::iter::once(home))
            .chain((1..n).map(move |k| (home + k) % n).filter(move |&i| Some(i) != urgent))
            .filter(move |&i| i == home || self.shards[i].may_have_work(now))
    }

    /// Records `outcomes` (with their `answered_here`, see `ImmediateStore::complete_one_now`) in
    /// shard `i`; puts each result at its index in `out` and each announcement in `wakeups`.
    fn complete_in(
        &self,
        i: usize,
        outcomes: impl Iterator<Item = (usize, Outcome, bool)>,
        now: Timestamp,
        out: &mut [Completion],
        wakeups: &mut Vec<Wakeup>,
    ) {
        let mut guard = self.lock(i);
        let st = &mut *guard;
        for (k, o, answered_here) in outcomes {
            let (done, wakeup) = st.apply(o, now);
            if let Some(slot) = out.get_mut(k) {
                *slot = done;
            }
            match wakeup {
                Some(Wakeup::Answered(_)) if answered_here => {}
                Some(w) => wakeups.push(w),
                None => {}
            }
        }
        let evicted = self.settle(i, st, now);
        drop(guard);
        drop(evicted);
    }

    /// The shard holding the live event `id`, and its slot there.
    fn find_event(&self, id: &EventId) -> Option<(usize, MutexGuard<'_, State>, u32)> {
        (0..self.shards.len()).find_map(|i| {
            let st = self.lock(i);
            let slot = st.by_id.get(id, &st.slots[..])?;
            Some((i, st, slot))
        })
    }
}

/// Nothing in the memory store waits: its hot calls are made without a future.
impl ImmediateStore for MemoryStore {
    fn ready_here(&self) -> bool {
        self.shards[self.home()].ready.load(Ordering::SeqCst) != 0
    }

    fn wakeups_keyed(&self) -> (ListenerKey, BoxStream<'static, Wakeup>) {
        self.wake.subscribe_keyed()
    }

    fn publish_one_now(
        &self,
        event: Event,
        now: Timestamp,
        handled_by: Option<ListenerKey>,
    ) -> Result<Published, StoreError> {
        // Most events have one delivery: its id is made before the lock, to hold it shorter.
        let first_id = DeliveryId::for_event(event.id());
        let (i, ask_others) = self.place(&event);
        let mut wake = Announce::default();
        let out = if ask_others {
            self.publish_checked(i, event, Some(first_id), now, &mut wake)
        } else {
            self.insert_into(i, event, Some(first_id), now, &mut wake)
        };
        self.announce(wake, now, handled_by);
        Ok(out)
    }

    fn publish_claim_now(
        &self,
        event: Event,
        now: Timestamp,
        handled_by: Option<ListenerKey>,
        claim_for: &SubscriptionName,
        lease: Duration,
    ) -> Result<PublishClaim, StoreError> {
        let home = self.home();
        let mut _checking = None;
        if self.shards.len() > 1 {
            // Only when no other shard may have something due that a claim would take first.
            let quiet = (0..self.shards.len()).all(|i| i == home || !self.shards[i].may_have_work(now));
            if !quiet {
                return Ok(PublishClaim::Declined(event));
            }
            if !event.is_fresh() || event.key().is_some() {
                _checking = Some(self.dedup.lock().unwrap_or_else(|p| p.into_inner()));
                if let Some(id) = self.held_elsewhere(&event, home) {
                    return Ok(PublishClaim::Stored(Published::Duplicate { id }));
                }
            }
        }
        let first_id = DeliveryId::for_event(event.id());
        let mut guard = self.lock(home);
        let st = &mut *guard;
        let sub = match st.sub_ids.get(claim_for).copied() {
            Some(sub) if !event.is_expired_at(now) && st.nothing_due(sub, now) && st.routes_to(event.topic(), sub) => {
                sub
            }
            _ => return Ok(PublishClaim::Declined(event)),
        };
        event.take_fresh();
        let mut wake = Announce::default();
        let (out, stored) = st.insert(event, Some(first_id), now, &mut wake);
        let Some((slot, gen)) = stored else {
            return Ok(PublishClaim::Stored(out));
        };
        let idx = st.slots[slot as usize]
            .rec
            .as_ref()
            .and_then(|rec| rec.deliveries.iter().position(|d| d.sub == sub))
            .and_then(|i| u16::try_from(i).ok());
        let mut claimed = None;
        if let Some(at) = idx.map(|idx| Ref { slot, gen, idx }) {
            // `sub` had nothing due: what it has ready now is this delivery alone.
            if st.subs.get_mut(sub as usize).and_then(|s| s.ready.pop()) == Some(at) {
                if let Take::Claimed(c) = st.take(sub, at, claim_for, now, now + lease) {
                    claimed = Some(c);
                }
            }
            if matches!(out, Published::Stored { deliveries: 1, .. }) {
                // Its one delivery is taken: nothing is due for anyone else to claim.
                wake.now = None;
            }
        }
        let evicted = self.settle(home, st, now);
        drop(guard);
        drop(evicted);
        self.announce(wake, now, handled_by);
        Ok(match claimed {
            Some(c) => PublishClaim::Claimed(out, c),
            None => PublishClaim::Stored(out),
        })
    }

    fn claim_now(
        &self,
        subscription: &SubscriptionName,
        max: usize,
        lease: Duration,
        into: &mut Vec<Claimed>,
    ) -> Result<(), StoreError> {
        let now = self.clock.now();
        let lease_until = now + lease;
        let first = into.len();
        self.promote_come_due(subscription, now);
        for i in self.claim_order(now) {
            let taken = into.len() - first;
            if taken >= max {
                break;
            }
            self.claim_from(i, subscription, max - taken, now, lease_until, into)?;
        }
        Ok(())
    }

    fn complete_one_now(
        &self,
        outcome: Outcome,
        answered_here: bool,
        now: Timestamp,
    ) -> Result<Completion, StoreError> {
        let Some(i) = self.shard_of(&outcome.lease) else {
            return Ok(Completion::Stale);
        };
        let mut out = [Completion::Stale];
        let mut wakeups = Vec::new();
        self.complete_in(
            i,
            std::iter::once((0, outcome, answered_here)),
            now,
            &mut out,
            &mut wakeups,
        );
        for w in wakeups {
            self.wake.send_at(w, now);
        }
        Ok(out[0])
    }

    fn complete_now(&self, outcomes: &mut Vec<(Outcome, bool)>, now: Timestamp) -> Result<Vec<Completion>, StoreError> {
        let mut out = vec![Completion::Stale; outcomes.len()];
        let mut wakeups = Vec::new();
        let first = outcomes.first().and_then(|(o, _)| self.shard_of(&o.lease));
        if outcomes.iter().all(|(o, _)| self.shard_of(&o.lease) == first) {
            // The usual batch: all from one shard.
            if let Some(i) = first {
                let all = outcomes.drain(..).enumerate().map(|(k, (o, a))| (k, o, a));
                self.complete_in(i, all, now, &mut out, &mut wakeups);
            }
        } else {
            let mut by_shard: Vec<Vec<(usize, Outcome, bool)>> = vec![Vec::new(); self.shards.len()];
            for (k, (o, a)) in outcomes.drain(..).enumerate() {
                if let Some(i) = self.shard_of(&o.lease) {
                    by_shard[i].push((k, o, a));
                }
            }
            for (i, these) in by_shard.into_iter().enumerate().filter(|(_, v)| !v.is_empty()) {
                self.complete_in(i, these.into_iter(), now, &mut out, &mut wakeups);
            }
        }
        outcomes.clear();
        for w in wakeups {
            self.wake.send_at(w, now);
        }
        Ok(out)
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn clock(&self) -> Clock {
        self.clock
    }

    fn immediate(&self) -> Option<&dyn ImmediateStore> {
        Some(self)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::in_memory()
    }

    async fn declare(&self, subscription: &SubscriptionSpec) -> Result<(), StoreError> {
        let _changing = self.subs_lock.lock().unwrap_or_else(|p| p.into_inner());
        for i in 0..self.shards.len() {
            let mut guard = self.lock(i);
            let st = &mut *guard;
            match st.sub_ids.get(&subscription.name) {
                Some(&i) => st.subs[i as usize].spec = subscription.clone(),
                None => {
                    let i = u32::try_from(st.subs.len())
                        .map_err(|_| StoreError::Unsupported("more than 2^32 subscriptions"))?;
                    st.subs.push(Sub {
                        spec: subscription.clone(),
                        removed: false,
                        scheduled: BinaryHeap::new(),
                        ready: ReadyQueue::default(),
                        leases: LeaseQueue::default(),
                    });
                    st.sub_ids.insert(subscription.name.clone(), i);
                }
            }
            st.routes.clear();
            st.last_route = None;
        }
        Ok(())
    }

    async fn remove_subscription(&self, name: &SubscriptionName) -> Result<u64, StoreError> {
        let now = self.clock.now();
        let _changing = self.subs_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for shard in 0..self.shards.len() {
            let mut guard = self.lock(shard);
            let st = &mut *guard;
            let Some(i) = st.sub_ids.remove(name) else {
                continue;
            };
            st.routes.clear();
            st.last_route = None;
            let Some(sub) = st.subs.get_mut(i as usize) else {
                continue;
            };
            sub.removed = true;
            let refs: Vec<Ref> = std::mem::take(&mut sub.scheduled)
                .into_iter()
                .map(|Reverse((_, at))| at)
                .chain(sub.ready.drain())
                .chain(sub.leases.drain().map(|(_, at, _)| at))
                .collect();
            let mut ended = Vec::new();
            for at in refs {
                let counts = &mut st.counts;
                let Some((rec, i)) = delivery_mut(&mut st.slots, at) else {
                    continue;
                };
                let d = &mut rec.deliveries[i];
                if !d.status.is_finished() {
                    set_status(counts, d, DeliveryStatus::Cancelled);
                    ended.push(at);
                }
            }
            n += ended.len() as u64;
            for at in ended {
                st.close_one(at, now);
            }
            let evicted = self.settle(shard, st, now);
            drop(guard);
            drop(evicted);
        }
        Ok(n)
    }

    async fn publish(&self, events: Vec<Event>) -> Result<Vec<Published>, StoreError> {
        let now = self.clock.now();
        let mut wake = Announce::default();
        let out = self.publish_all(events, None, now, &mut wake);
        self.announce(wake, now, None);
        Ok(out)
    }

    async fn publish_one(&self, event: Event) -> Result<Published, StoreError> {
        self.publish_one_now(event, self.clock.now(), None)
    }

    async fn claim(
        &self,
        subscription: &SubscriptionName,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let mut out = Vec::with_capacity(max.min(64));
        self.claim_now(subscription, max, lease, &mut out)?;
        Ok(out)
    }

    async fn extend(&self, leases: &[Lease], lease: Duration) -> Result<Vec<bool>, StoreError> {
        let now = self.clock.now();
        let until = now + lease;
        let mut out = vec![false; leases.len()];
        for shard in 0..self.shards.len() {
            let mine: Vec<usize> = (0..leases.len())
                .filter(|&k| self.shard_of(&leases[k]) == Some(shard))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let mut guard = self.lock(shard);
            let st = &mut *guard;
            for k in mine {
                let l = &leases[k];
                let Some(at) = st.find_leased(l) else { continue };
                let sub = delivery_mut(&mut st.slots, at).and_then(|(rec, i)| {
                    let d = &mut rec.deliveries[i];
                    d.leased_by(l.token).then(|| {
                        d.until = until;
                        d.sub
                    })
                });
                if let Some(s) = sub.and_then(|s| st.subs.get_mut(s as usize)) {
                    s.leases.push(until, at, l.token);
                }
                out[k] = sub.is_some();
            }
        }
        Ok(out)
    }

    async fn complete(&self, outcomes: Vec<Outcome>) -> Result<Vec<Completion>, StoreError> {
        let mut outcomes = outcomes.into_iter().map(|o| (o, false)).collect();
        self.complete_now(&mut outcomes, self.clock.now())
    }

    async fn complete_one(&self, outcome: Outcome) -> Result<Completion, StoreError> {
        self.complete_one_now(outcome, false, self.clock.now())
    }

    async fn cancel(&self, id: EventId, end: CancelAs) -> Result<Cancelled, StoreError> {
        let now = self.clock.now();
        let Some((shard, mut guard, slot)) = self.find_event(&id) else {
            return Ok(Cancelled::NotFound);
        };
        let st = &mut *guard;
        let gen = st.slots[slot as usize].gen;
        let to = match end {
            CancelAs::Cancelled => DeliveryStatus::Cancelled,
            CancelAs::Expired => DeliveryStatus::Expired,
        };
        let counts = &mut st.counts;
        let mut ended = Vec::new();
        if let Some(rec) = st.slots[slot as usize].rec.as_mut() {
            for (idx, d) in rec.deliveries.iter_mut().enumerate() {
                if matches!(
                    d.status,
                    DeliveryStatus::Scheduled | DeliveryStatus::Pending | DeliveryStatus::Retrying
                ) {
                    set_status(counts, d, to);
                    ended.push(Ref {
                        slot,
                        gen,
                        idx: u16::try_from(idx).unwrap_or(u16::MAX),
                    });
                }
            }
        }
        let n = u32::try_from(ended.len()).unwrap_or(u32::MAX);
        for at in ended {
            st.close_one(at, now);
        }
        let evicted = self.settle(shard, st, now);
        drop(guard);
        drop(evicted);
        Ok(if n == 0 {
            Cancelled::TooLate
        } else {
            Cancelled::Ended(n)
        })
    }

    async fn requeue(&self, id: DeliveryId) -> Result<Requeued, StoreError> {
        let now = self.clock.now();
        let found = (0..self.shards.len()).find_map(|i| {
            let st = self.lock(i);
            let at = st.find_delivery(id)?;
            Some((i, st, at))
        });
        let Some((shard, mut guard, at)) = found else {
            return Ok(Requeued::NotFound);
        };
        let st = &mut *guard;
        let counts = &mut st.counts;
        let Some((rec, i)) = delivery_mut(&mut st.slots, at) else {
            return Ok(Requeued::NotFound);
        };
        let priority = rec.event.priority();
        let d = &mut rec.deliveries[i];
        if d.status != DeliveryStatus::Dead {
            return Ok(Requeued::NotDead(d.status));
        }
        set_status(counts, d, DeliveryStatus::Pending);
        d.due = now;
        let sub = d.sub;
        st.reopen_one(at);
        st.push_ready(at, sub, priority, now);
        let evicted = self.settle(shard, st, now);
        drop(guard);
        drop(evicted);
        self.wake.send_at(Wakeup::Due(now), now);
        Ok(Requeued::Requeued)
    }

    async fn next_due(
        &self,
        subscriptions: &[SubscriptionName],
        after: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError> {
        let now = self.clock.now();
        let mut earliest: Option<Timestamp> = None;
        for shard in 0..self.shards.len() {
            let mut guard = self.lock(shard);
            let st = &mut *guard;
            for name in subscriptions {
                let Ok(sub) = st.sub_index(name) else { continue };
                // Only what is due by the clock may become pending: `after` may lie ahead of it.
                st.promote(sub, after.min(now));
                if let Some(t) = st.next_after(sub, after) {
                    earliest = Some(earliest.map_or(t, |e| e.min(t)));
                }
            }
            let evicted = self.settle(shard, st, now);
            drop(guard);
            drop(evicted);
        }
        Ok(earliest)
    }

    fn wakeups(&self) -> BoxStream<'static, Wakeup> {
        self.wake.subscribe()
    }

    async fn query(&self, filter: &EventFilter, page: PageRequest) -> Result<Page<EventRecord>, StoreError> {
        let now = self.clock.now();
        // Every shard at once, locked in shard order, for one consistent page.
        let guards: Vec<MutexGuard<'_, State>> = (0..self.shards.len()).map(|i| self.lock(i)).collect();
        let limit = page.limit.clamp(1, PageRequest::MAX_LIMIT) as usize;
        let mut items = Vec::with_capacity(limit.min(64));
        // Each shard's candidates newest first, merged newest first.
        let mut lists: Vec<std::iter::Peekable<Box<dyn Iterator<Item = (EventId, u32)> + '_>>> = guards
            .iter()
            .map(|st| {
                let list: Box<dyn Iterator<Item = (EventId, u32)> + '_> = match &filter.key {
                    // A key names at most one live event: look it up instead of scanning.
                    Some(key) => Box::new(
                        st.keys
                            .get(key.as_str())
                            .and_then(|id| Some((*id, st.by_id.get(id, &st.slots[..])?)))
                            .filter(|(id, _)| page.after.is_none_or(|a| *id < a))
                            .into_iter(),
                    ),
                    None => Box::new(st.by_id.newest_first(page.after, &st.slots[..])),
                };
                list.peekable()
            })
            .collect();
        loop {
            let next = lists
                .iter_mut()
                .enumerate()
                .filter_map(|(i, l)| Some((l.peek()?.0, i)))
                .max()
                .map(|(_, i)| i);
            let Some(i) = next else { break };
            let Some((_, slot)) = lists[i].next() else { break };
            let st = &guards[i];
            let Some(rec) = st.slots[slot as usize].rec.as_ref() else {
                continue;
            };
            if !filter.matches_topic(rec.event.topic()) {
                continue;
            }
            let Some(record) = st.record(slot, false, now) else {
                continue;
            };
            if !filter.matches(&record) {
                continue;
            }
            items.push(record);
            if items.len() > limit {
                break;
            }
        }
        Ok(Page::from_lookahead(items, limit))
    }

    async fn get(&self, id: EventId) -> Result<Option<EventRecord>, StoreError> {
        let now = self.clock.now();
        Ok(self
            .find_event(&id)
            .and_then(|(_, st, slot)| st.record(slot, true, now)))
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        let now = self.clock.now();
        let mut total = Stats {
            events: 0,
            unrouted: 0,
            deliveries: StatusCounts::default(),
        };
        for shard in 0..self.shards.len() {
            let mut guard = self.lock(shard);
            let st = &mut *guard;
            // Count scheduled deliveries whose time has come as pending, as `get` and `query`
            // show them.
            for sub in 0..u32::try_from(st.subs.len()).unwrap_or(u32::MAX) {
                st.promote(sub, now);
            }
            total.events += st.by_id.len() as u64;
            total.unrouted += st.unrouted;
            let c = &st.counts;
            let t = &mut total.deliveries;
            t.scheduled += c.scheduled;
            t.pending += c.pending;
            t.active += c.active;
            t.retrying += c.retrying;
            t.succeeded += c.succeeded;
            t.dead += c.dead;
            t.cancelled += c.cancelled;
            t.expired += c.expired;
        }
        Ok(total)
    }

    async fn purge(&self, before: Timestamp) -> Result<u64, StoreError> {
        let now = self.clock.now();
        let mut removed = 0;
        for shard in 0..self.shards.len() {
            let mut guard = self.lock(shard);
            let st = &mut *guard;
            while let Some(current) = st.pop_finished(Some(before)) {
                removed += u64::from(current);
            }
            let evicted = self.settle(shard, st, now);
            drop(guard);
            drop(evicted);
        }
        Ok(removed)
    }

    fn backlog(&self) -> Option<u64> {
        Some(self.shards.iter().map(|s| s.open.load(Ordering::Relaxed)).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventParts;
    use crate::topic::Pattern;

    /// Slot generations for the index alone: `None` is an empty slot.
    struct Gens(Vec<Option<u32>>);

    impl Slab for Gens {
        fn holds(&self, slot: u32, gen: u32) -> bool {
            self.0.get(slot as usize).copied().flatten() == Some(gen)
        }
    }

    /// The index finds every id however events are removed: in about publish order, far from the
    /// others, behind a live front, after compaction, and once an id is published again.
    #[test]
    fn the_id_index_finds_every_id_whatever_the_order_of_removal() {
        let ids: Vec<EventId> = (0..5_000)
            .map(|i| EventId::new_at(Timestamp::from_millis(i / 7)))
            .collect();
        let mut index = IdIndex::default();
        let mut slab = Gens(vec![Some(0); ids.len()]);
        // A little out of order, as concurrent publishers deliver them.
        for i in (0..ids.len()).step_by(2) {
            for j in [i + 1, i] {
                let spot = index.locate(&ids[j]);
                assert!(!index.is_live(spot, &slab));
                index.put(spot, ids[j], j as u32, 0);
            }
        }
        assert_eq!(index.len(), ids.len());
        for (slot, id) in ids.iter().enumerate() {
            assert_eq!(index.get(id, &slab), Some(slot as u32));
        }
        // The first stays (a delayed event, say); the rest go in a shuffled publish order.
        let mut order: Vec<usize> = (1..ids.len()).collect();
        for chunk in order.chunks_mut(5) {
            chunk.reverse();
        }
        // And some far from the others.
        order.swap(10, 4_000);
        for (n, &i) in order.iter().enumerate() {
            assert_eq!(index.get(&ids[i], &slab), Some(i as u32), "before removal {n}");
            slab.0[i] = None;
            index.forget_one(&slab);
            assert_eq!(index.get(&ids[i], &slab), None);
            assert_eq!(index.len(), ids.len() - n - 1);
            if n % 997 == 0 {
                let live = std::iter::once(0).chain(order[n + 1..].iter().copied());
                for j in live {
                    assert_eq!(index.get(&ids[j], &slab), Some(j as u32), "after removal {n}");
                }
            }
        }
        assert_eq!(index.len(), 1);
        assert_eq!(index.get(&ids[0], &slab), Some(0));
        let newest: Vec<_> = index.newest_first(None, &slab).collect();
        assert_eq!(newest, vec![(ids[0], 0)]);
        // A removed id published again, into a reused slot at its next generation.
        let again = ids[4_999];
        let spot = index.locate(&again);
        assert!(!index.is_live(spot, &slab));
        slab.0[7] = Some(1);
        index.put(spot, again, 7, 1);
        assert_eq!(index.get(&again, &slab), Some(7));
        assert_eq!(index.len(), 2);
    }

    /// A fresh event, as the runtime makes one, on topic `t.x`, due now by the store's clock (a
    /// `MemoryStore::new` clock).
    fn fresh(priority: Priority, key: Option<&str>) -> Event {
        let mut parts = EventParts::new(Topic::new("t.x").unwrap(), "1");
        let now = Timestamp::from_millis(parts.published_at.as_millis() - 5);
        (parts.published_at, parts.deliver_at) = (now, now);
        parts.priority = priority;
        parts.key = key.map(str::to_owned);
        Event::from_parts_replying(parts, None, true, None)
    }

    /// Runs `f` on a thread of its own whose shard is `home` (modulo the shard count) and returns
    /// its result.
    fn on_a_thread<T: Send + 'static>(home: usize, f: impl std::future::Future<Output = T> + Send + 'static) -> T {
        std::thread::spawn(move || {
            crate::home::set_number(home);
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(f)
        })
        .join()
        .unwrap()
    }

    /// How many shards hold open deliveries.
    fn shards_in_use(store: &MemoryStore) -> usize {
        store
            .shards
            .iter()
            .filter(|s| s.open.load(Ordering::Relaxed) > 0)
            .count()
    }

    /// A store of `shards` shards with the subscription `s` to `t.*`.
    async fn subscribed(shards: usize) -> (Arc<MemoryStore>, SubscriptionName) {
        let store = Arc::new(MemoryStore::builder().shards(shards).build());
        let name = SubscriptionName::new("s").unwrap();
        let spec = SubscriptionSpec {
            name: name.clone(),
            pattern: Pattern::new("t.*").unwrap(),
        };
        store.declare(&spec).await.unwrap();
        (store, name)
    }

    /// Events published from several threads land in several shards; every call that reads or
    /// changes them by id, key, page or lease sees all of them.
    #[tokio::test]
    async fn a_sharded_store_answers_for_every_shard() {
        let (store, name) = subscribed(4).await;
        let mut ids = Vec::new();
        let mut keyed = Vec::new();
        for home in 0..4 {
            let store = store.clone();
            let (mine, key) = on_a_thread(home, async move {
                let mut mine = Vec::new();
                for _ in 0..50 {
                    mine.push(store.publish_one(fresh(Priority::NORMAL, None)).await.unwrap().id());
                }
                (
                    mine,
                    store.publish_one(fresh(Priority::NORMAL, Some("k"))).await.unwrap(),
                )
            });
            ids.extend(mine);
            keyed.push(key);
        }
        assert_eq!(shards_in_use(&store), 4);
        // One key, one event: the three later publishes name the first.
        let holder = keyed[0].id();
        assert!(matches!(keyed[0], Published::Stored { .. }));
        assert!(keyed[1..].iter().all(|p| *p == Published::Duplicate { id: holder }));
        ids.push(holder);
        // The same event again, from another thread: a duplicate, not a second copy.
        let again = store.get(ids[0]).await.unwrap().unwrap().event;
        let copy = Event::from_parts(again.into_parts());
        let store2 = store.clone();
        let republished = on_a_thread(1, async move { store2.publish_one(copy).await.unwrap() });
        assert_eq!(republished, Published::Duplicate { id: ids[0] });

        let stats = store.stats().await.unwrap();
        assert_eq!((stats.events, stats.deliveries.pending), (201, 201));
        assert_eq!(store.backlog(), Some(201));
        // Pages merge the shards newest first, every event once.
        let mut paged = Vec::new();
        let mut page = PageRequest::first(50);
        loop {
            let got = store.query(&EventFilter::default(), page).await.unwrap();
            paged.extend(got.items.iter().map(|r| r.event.id()));
            match got.next {
                Some(after) => page = PageRequest::after(after, 50),
                None => break,
            }
        }
        let mut expected = ids.clone();
        expected.sort();
        expected.reverse();
        assert_eq!(paged, expected);
        let by_key = EventFilter {
            key: Some("k".into()),
            ..EventFilter::default()
        };
        let found = store.query(&by_key, PageRequest::first(10)).await.unwrap();
        assert_eq!(
            found.items.iter().map(|r| r.event.id()).collect::<Vec<_>>(),
            vec![holder]
        );

        // A cancel finds its event's shard.
        assert_eq!(
            store.cancel(ids[77], CancelAs::Cancelled).await.unwrap(),
            Cancelled::Ended(1)
        );
        assert_eq!(
            store.cancel(EventId::new(), CancelAs::Cancelled).await.unwrap(),
            Cancelled::NotFound
        );
        // One claim takes from every shard; one batch of outcomes completes in every shard.
        let claimed = store.claim(&name, 1000, Duration::from_secs(30)).await.unwrap();
        assert_eq!(claimed.len(), 200);
        let leases: Vec<Lease> = claimed.iter().map(|c| c.lease).collect();
        let extended = store.extend(&leases, Duration::from_secs(60)).await.unwrap();
        assert!(extended.iter().all(|&held| held));
        let now = store.clock().now();
        let outcomes = claimed
            .iter()
            .map(|c| Outcome {
                lease: c.lease,
                finished_at: now,
                verdict: Verdict::Succeeded { reply: None },
            })
            .collect();
        let done = store.complete(outcomes).await.unwrap();
        assert!(done.iter().all(|c| *c == Completion::Applied));
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.deliveries.succeeded, stats.deliveries.cancelled), (200, 1));
        assert_eq!(store.backlog(), Some(0));
        assert_eq!(
            store.get(ids[150]).await.unwrap().unwrap().deliveries[0].status,
            DeliveryStatus::Succeeded
        );
    }

    /// A claim starts with the shard whose most urgent ready delivery is the most urgent, not
    /// with its own thread's.
    #[tokio::test]
    async fn a_claim_takes_the_most_urgent_shard_first() {
        let (store, name) = subscribed(2).await;
        let (a, b) = (store.clone(), store.clone());
        // Two threads, two shards (threads take shards in turn).
        let low = on_a_thread(0, async move {
            a.publish_one(fresh(Priority::LOW, None)).await.unwrap().id()
        });
        let critical = on_a_thread(1, async move {
            b.publish_one(fresh(Priority::CRITICAL, None)).await.unwrap().id()
        });
        assert_eq!(shards_in_use(&store), 2);
        // From the low one's shard.
        for expected in [critical, low] {
            let store = store.clone();
            let name = name.clone();
            let got = on_a_thread(0, async move {
                store.claim(&name, 1, Duration::from_secs(30)).await.unwrap()
            });
            assert_eq!(got.iter().map(|c| c.event.id()).collect::<Vec<_>>(), vec![expected]);
        }
    }

    /// Retention counts the finished events of every shard.
    #[tokio::test]
    async fn retention_counts_every_shard() {
        let store = Arc::new(MemoryStore::builder().shards(2).retain_max(10).build());
        for home in 0..2 {
            let store = store.clone();
            // Nothing is subscribed: each event is finished (unrouted) as it is published.
            on_a_thread(home, async move {
                for _ in 0..20 {
                    store.publish_one(fresh(Priority::NORMAL, None)).await.unwrap();
                }
            });
        }
        let stats = store.stats().await.unwrap();
        assert!(stats.events <= 11, "{} events kept of a limit of 10", stats.events);
        assert!(stats.events >= 10);
    }
}
