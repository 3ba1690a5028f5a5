//! The tap pool: a few taps kept created, down and unattached, so a VM
//! being created does not wait for one; and the sweep at daemon start that
//! deletes taps a crash left behind.
//!
//! The pool's lock is never held across a host call, so taking a ready tap
//! does not wait for a fill that is creating others.

use std::collections::{HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};

use crate::tap::{tap_name, tap_number, TapError, TapHost, TAP_PREFIX};

/// Taps ready to hand out, over a [`TapHost`].
#[derive(Debug)]
pub struct TapPool<H> {
    host: H,
    target: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Created, down, unattached.
    ready: VecDeque<String>,
    /// Names not free: in use by a VM, being created or being deleted.
    busy: HashSet<String>,
    /// Taps a fill is creating right now, so two fills do not overshoot.
    pending: usize,
}

impl State {
    /// The lowest tap name neither ready nor busy, reserved as busy.
    fn reserve_name(&mut self) -> String {
        let name = (0..=u32::MAX)
            .map(tap_name)
            .find(|name| !self.busy.contains(name) && !self.ready.contains(name))
            .expect("fewer than 2^32 taps");
        self.busy.insert(name.clone());
        name
    }
}

impl<H: TapHost> TapPool<H> {
    /// A pool that keeps `target` taps ready. It starts empty: call
    /// [`TapPool::reclaim`] then [`TapPool::fill`].
    pub fn new(host: H, target: usize) -> TapPool<H> {
        TapPool { host, target, state: Mutex::default() }
    }

    /// The host the pool acts on.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// How many taps are ready now.
    pub fn ready_count(&self) -> usize {
        self.lock().ready.len()
    }

    /// A tap attached to `bridge` and up: a ready one, or a new one when none
    /// is. The pool is then short of its target; call [`TapPool::fill`] when
    /// convenient.
    pub async fn take(&self, bridge: &str) -> Result<String, TapError> {
        let (name, fresh) = {
            let mut state = self.lock();
            match state.ready.pop_front() {
                Some(name) => {
                    state.busy.insert(name.clone());
                    (name, false)
                }
                None => (state.reserve_name(), true),
            }
        };
        if fresh {
            if let Err(e) = self.host.create_tap(&name).await {
                self.lock().busy.remove(&name);
                return Err(e);
            }
        }
        if let Err(e) = self.host.attach(&name, bridge).await {
            // A tap in an unknown state is not worth keeping.
            if let Err(del) = self.host.delete(&name).await {
                tracing::warn!(tap = %name, error = %del, "cannot delete a tap that failed to attach");
            }
            self.lock().busy.remove(&name);
            return Err(e);
        }
        tracing::debug!(tap = %name, fresh, "took tap");
        Ok(name)
    }

    /// Returns a tap a VM no longer uses: detached, and kept ready if the
    /// pool is below its target, else deleted.
    pub async fn give_back(&self, name: &str) -> Result<(), TapError> {
        let detached = self.host.detach(name).await;
        {
            let mut state = self.lock();
            if detached.is_ok() && state.ready.len() + state.pending < self.target {
                state.busy.remove(name);
                state.ready.push_back(name.to_string());
                return Ok(());
            }
        }
        // Still busy while deleting, so the name is not handed out meanwhile.
        let deleted = self.host.delete(name).await;
        self.lock().busy.remove(name);
        deleted
    }

    /// Creates taps until `target` are ready.
    pub async fn fill(&self) -> Result<(), TapError> {
        loop {
            let name = {
                let mut state = self.lock();
                if state.ready.len() + state.pending >= self.target {
                    return Ok(());
                }
                state.pending += 1;
                state.reserve_name()
            };
            let created = self.host.create_tap(&name).await;
            let mut state = self.lock();
            state.pending -= 1;
            state.busy.remove(&name);
            created?;
            state.ready.push_back(name);
        }
    }

    /// At daemon start: deletes every banger tap not in `in_use` (left by a
    /// crash, or ready taps of the previous run) and records `in_use` as
    /// taken. Returns the names deleted.
    pub async fn reclaim(&self, in_use: &HashSet<String>) -> Result<Vec<String>, TapError> {
        {
            let mut state = self.lock();
            state.ready.clear();
            state.busy.extend(in_use.iter().cloned());
        }
        let mut deleted = Vec::new();
        for name in self.host.list(TAP_PREFIX).await? {
            if tap_number(&name).is_none() || in_use.contains(&name) {
                continue;
            }
            self.host.delete(&name).await?;
            tracing::info!(tap = %name, "deleted leftover tap");
            deleted.push(name);
        }
        Ok(deleted)
    }

    /// Deletes the ready taps (taps in use are the VMs' business). Tries them
    /// all and returns the first error.
    pub async fn drain(&self) -> Result<(), TapError> {
        let ready: Vec<String> = {
            let mut state = self.lock();
            let ready: Vec<String> = state.ready.drain(..).collect();
            state.busy.extend(ready.iter().cloned());
            ready
        };
        let mut first_error = None;
        for name in ready {
            let result = self.host.delete(&name).await;
            self.lock().busy.remove(&name);
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent between statements; a panic elsewhere does
        // not make it unusable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::link::LinkError;

    /// Links by name with their bridge, and every call made.
    #[derive(Default)]
    struct Recording {
        links: Mutex<BTreeMap<String, Option<String>>>,
        calls: Mutex<Vec<String>>,
        fail_create: AtomicBool,
    }

    impl Recording {
        fn with_links(names: &[&str]) -> Recording {
            let rec = Recording::default();
            for name in names {
                rec.links.lock().unwrap().insert(name.to_string(), None);
            }
            rec
        }
        fn calls(&self) -> Vec<String> {
            std::mem::take(&mut *self.calls.lock().unwrap())
        }
        fn links(&self) -> Vec<(String, Option<String>)> {
            self.links.lock().unwrap().clone().into_iter().collect()
        }
        fn record(&self, call: String) {
            self.calls.lock().unwrap().push(call);
        }
    }

    impl TapHost for Recording {
        async fn create_tap(&self, name: &str) -> Result<(), TapError> {
            self.record(format!("create {name}"));
            if self.fail_create.load(Ordering::Relaxed) {
                return Err(TapError::Name(name.into()));
            }
            self.links.lock().unwrap().insert(name.into(), None);
            Ok(())
        }
        async fn delete(&self, name: &str) -> Result<(), TapError> {
            self.record(format!("delete {name}"));
            self.links.lock().unwrap().remove(name);
            Ok(())
        }
        async fn attach(&self, tap: &str, bridge: &str) -> Result<(), TapError> {
            self.record(format!("attach {tap} {bridge}"));
            let mut links = self.links.lock().unwrap();
            let master = links.get_mut(tap).ok_or_else(|| LinkError::NotFound(tap.into()))?;
            *master = Some(bridge.into());
            Ok(())
        }
        async fn detach(&self, tap: &str) -> Result<(), TapError> {
            self.record(format!("detach {tap}"));
            let mut links = self.links.lock().unwrap();
            let master = links.get_mut(tap).ok_or_else(|| LinkError::NotFound(tap.into()))?;
            *master = None;
            Ok(())
        }
        async fn list(&self, prefix: &str) -> Result<Vec<String>, TapError> {
            self.record(format!("list {prefix}"));
            let links = self.links.lock().unwrap();
            Ok(links.keys().filter(|n| n.starts_with(prefix)).cloned().collect())
        }
    }

    fn set(names: &[&str]) -> HashSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[tokio::test]
    async fn fill_then_take_uses_a_ready_tap() {
        let pool = TapPool::new(Recording::default(), 2);
        pool.fill().await.unwrap();
        assert_eq!(pool.host().calls(), ["create bgtap0", "create bgtap1"]);
        assert_eq!(pool.ready_count(), 2);
        pool.fill().await.unwrap();
        assert!(pool.host().calls().is_empty(), "a full pool creates nothing");

        assert_eq!(pool.take("br").await.unwrap(), "bgtap0");
        assert_eq!(pool.host().calls(), ["attach bgtap0 br"], "no creation on take");
        pool.fill().await.unwrap();
        assert_eq!(pool.host().calls(), ["create bgtap2"], "in-use names are skipped");
    }

    #[tokio::test]
    async fn take_from_an_empty_pool_creates() {
        let pool = TapPool::new(Recording::default(), 0);
        assert_eq!(pool.take("br").await.unwrap(), "bgtap0");
        assert_eq!(pool.take("br").await.unwrap(), "bgtap1");
        assert_eq!(pool.host().calls(), ["create bgtap0", "attach bgtap0 br", "create bgtap1", "attach bgtap1 br"]);
    }

    #[tokio::test]
    async fn give_back_keeps_up_to_target_then_deletes() {
        let pool = TapPool::new(Recording::default(), 1);
        let a = pool.take("br").await.unwrap();
        let b = pool.take("br").await.unwrap();
        pool.host().calls();
        pool.give_back(&a).await.unwrap();
        pool.give_back(&b).await.unwrap();
        assert_eq!(pool.host().calls(), ["detach bgtap0", "detach bgtap1", "delete bgtap1"]);
        assert_eq!(pool.ready_count(), 1);
        assert_eq!(pool.host().links(), [("bgtap0".to_string(), None)]);
        // The kept tap is the next one handed out, and the freed name is reused.
        assert_eq!(pool.take("br").await.unwrap(), "bgtap0");
        assert_eq!(pool.take("br").await.unwrap(), "bgtap1");
    }

    #[tokio::test]
    async fn give_back_of_a_vanished_tap_deletes_it() {
        let pool = TapPool::new(Recording::default(), 4);
        let a = pool.take("br").await.unwrap();
        pool.host().links.lock().unwrap().clear();
        pool.host().calls();
        pool.give_back(&a).await.unwrap();
        assert_eq!(pool.host().calls(), ["detach bgtap0", "delete bgtap0"]);
        assert_eq!(pool.ready_count(), 0);
    }

    #[tokio::test]
    async fn reclaim_deletes_every_banger_tap_not_in_use() {
        let host = Recording::with_links(&["bgtap0", "bgtap1", "bgtap7", "bgtapx", "eth0"]);
        let pool = TapPool::new(host, 1);
        let deleted = pool.reclaim(&set(&["bgtap1"])).await.unwrap();
        assert_eq!(deleted, ["bgtap0", "bgtap7"]);
        let left: Vec<String> = pool.host().links().into_iter().map(|(n, _)| n).collect();
        assert_eq!(left, ["bgtap1", "bgtapx", "eth0"], "other links are never touched");
        pool.host().calls();
        pool.fill().await.unwrap();
        assert_eq!(pool.host().calls(), ["create bgtap0"]);
        assert_eq!(pool.take("br").await.unwrap(), "bgtap0");
        assert_eq!(pool.take("br").await.unwrap(), "bgtap2", "bgtap1 is in use");
    }

    #[tokio::test]
    async fn drain_deletes_ready_taps_only() {
        let pool = TapPool::new(Recording::default(), 2);
        pool.fill().await.unwrap();
        let used = pool.take("br").await.unwrap();
        pool.host().calls();
        pool.drain().await.unwrap();
        assert_eq!(pool.host().calls(), ["delete bgtap1"]);
        assert_eq!(pool.ready_count(), 0);
        assert_eq!(pool.host().links(), [(used, Some("br".to_string()))]);
    }

    #[tokio::test]
    async fn failed_creation_frees_the_name() {
        let pool = TapPool::new(Recording::default(), 1);
        pool.host().fail_create.store(true, Ordering::Relaxed);
        assert!(pool.fill().await.is_err());
        assert!(pool.take("br").await.is_err());
        pool.host().fail_create.store(false, Ordering::Relaxed);
        pool.host().calls();
        pool.fill().await.unwrap();
        assert_eq!(pool.host().calls(), ["create bgtap0"]);
    }

    #[tokio::test]
    async fn failed_attach_deletes_the_tap() {
        let pool = TapPool::new(Recording::default(), 1);
        pool.fill().await.unwrap();
        pool.host().links.lock().unwrap().clear();
        pool.host().calls();
        assert!(pool.take("br").await.is_err());
        assert_eq!(pool.host().calls(), ["attach bgtap0 br", "delete bgtap0"]);
        assert_eq!(pool.take("br").await.unwrap(), "bgtap0", "the name is free again");
    }
}
