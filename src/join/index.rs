//! One model's records awaiting labels, labels awaiting records, and its comparison.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{JoinSettings, Joined, Listener};
use crate::compare::{Comparison, Observation, Truth};

/// One model's records awaiting labels, labels awaiting records, and its comparison.
pub(super) struct ModelIndex {
    pub(super) comparison: Comparison,
    records: HashMap<String, Entry>,
    order: VecDeque<(String, Instant)>,
    held: HashMap<String, (Truth, Instant)>,
    held_order: VecDeque<(String, Instant)>,
    expired: HashSet<String>,
    expired_order: VecDeque<String>,
    pub(super) changed: bool,
}

#[derive(Deserialize, Serialize)]
struct Entry {
    observation: Observation,
    labelled: bool,
}

/// A `ModelIndex` as a checkpoint holds it: instants as ages (milliseconds before the checkpoint),
/// maps as their entries in arrival order. Written borrowed (`SavedIndex`), read back owned.
#[derive(Deserialize)]
pub(super) struct IndexState {
    comparison: Comparison,
    records: Vec<(String, u64, Entry)>,
    held: Vec<(String, u64, Truth)>,
    expired: Vec<String>,
}

/// `IndexState`'s fields, borrowed from the live index.
#[derive(Serialize)]
pub(super) struct SavedIndex<'a> {
    comparison: &'a Comparison,
    records: Vec<(&'a str, u64, &'a Entry)>,
    held: Vec<(&'a str, u64, &'a Truth)>,
    expired: Vec<&'a str>,
}

impl ModelIndex {
    pub(super) fn new(comparison: Comparison) -> Self {
        Self {
            comparison,
            records: HashMap::new(),
            order: VecDeque::new(),
            held: HashMap::new(),
            held_order: VecDeque::new(),
            expired: HashSet::new(),
            expired_order: VecDeque::new(),
            changed: false,
        }
    }

    /// The state to checkpoint, `now` being the checkpoint's time.
    /// Records and labels held: what a checkpoint writes, nearly all of it.
    pub(super) fn len(&self) -> usize {
        self.records.len() + self.held.len()
    }

    pub(super) fn save(&self, now: Instant) -> SavedIndex<'_> {
        let age = |at: Instant| now.saturating_duration_since(at).as_millis() as u64;
        // `order` names each indexed record once (pushed when new, popped when evicted);
        // `held_order` may name a label already joined or held again: only the live ones are kept.
        let records = self
            .order
            .iter()
            .filter_map(|(id, at)| {
                let entry = self.records.get(id)?;
                Some((id.as_str(), age(*at), entry))
            })
            .collect();
        let held = self
            .held_order
            .iter()
            .filter_map(|(id, at)| {
                let (truth, held_at) = self.held.get(id)?;
                (held_at == at).then(|| (id.as_str(), age(*at), truth))
            })
            .collect();
        let expired = self.expired_order.iter().filter(|id| self.expired.contains(*id)).map(String::as_str).collect();
        SavedIndex { comparison: &self.comparison, records, held, expired }
    }

    /// The index a checkpoint held, its ages counted back from `now`.
    pub(super) fn restore(state: IndexState, now: Instant) -> Self {
        let at = |age: u64| now.checked_sub(Duration::from_millis(age)).unwrap_or(now);
        let mut index = Self::new(state.comparison);
        for (id, age, entry) in state.records {
            index.order.push_back((id.clone(), at(age)));
            index.records.insert(id, entry);
        }
        for (id, age, truth) in state.held {
            let held_at = at(age);
            index.held_order.push_back((id.clone(), held_at));
            index.held.insert(id, (truth, held_at));
        }
        for id in state.expired {
            index.expired.insert(id.clone());
            index.expired_order.push_back(id);
        }
        index
    }

    /// Indexes a paired record (joining the label held for it, if any); returns whether a label joined.
    pub(super) fn record(
        &mut self,
        model: &str,
        observation: Observation,
        settings: &JoinSettings,
        listeners: &mut [Box<dyn Listener>],
    ) -> bool {
        self.changed = true;
        self.comparison.add(&observation);
        let id = observation.request_id.clone();
        let mut entry = Entry { observation, labelled: false };
        // Labels rarely come first: skip hashing the id when none is held.
        let joined_late = if self.held.is_empty() { None } else { self.held.remove(&id).map(|(truth, _)| truth) };
        if let Some(truth) = &joined_late {
            self.comparison.add_truth(&entry.observation, truth);
            for listener in listeners.iter_mut() {
                listener.joined(model, &entry.observation, truth);
            }
            entry.labelled = true;
            crate::metrics::feedback(model, "joined_late");
        }
        if self.records.insert(id.clone(), entry).is_none() {
            self.order.push_back((id, Instant::now()));
        }
        while self.records.len() > settings.index_capacity {
            self.evict_oldest_record(settings.index_capacity);
        }
        joined_late.is_some()
    }

    pub(super) fn truth(
        &mut self,
        id: String,
        truth: Truth,
        settings: &JoinSettings,
        listeners: &mut [Box<dyn Listener>],
    ) -> Joined {
        if let Some(entry) = self.records.get_mut(&id) {
            if entry.labelled {
                return Joined::Duplicate;
            }
            entry.labelled = true;
            self.comparison.add_truth(&entry.observation, &truth);
            for listener in listeners.iter_mut() {
                listener.joined(self.comparison.model(), &entry.observation, &truth);
            }
            return Joined::Joined;
        }
        if self.expired.contains(&id) {
            return Joined::Expired;
        }
        if self.held.contains_key(&id) {
            return Joined::Duplicate;
        }
        let now = Instant::now();
        self.held.insert(id.clone(), (truth, now));
        self.held_order.push_back((id, now));
        while self.held.len() > settings.hold_capacity {
            let Some((oldest, _)) = self.held_order.pop_front() else { break };
            if self.held.remove(&oldest).is_some() {
                crate::metrics::feedback(self.comparison_model(), "unknown");
            }
        }
        Joined::Held
    }

    fn comparison_model(&self) -> &str {
        self.comparison.model()
    }

    fn evict_oldest_record(&mut self, expired_capacity: usize) {
        let Some((id, _)) = self.order.pop_front() else { return };
        if self.records.remove(&id).is_some_and(|entry| !entry.labelled) {
            // Remember it (bounded) so a label that comes now is told `expired`, not held.
            if self.expired.insert(id.clone()) {
                self.expired_order.push_back(id);
            }
            while self.expired.len() > expired_capacity {
                let Some(old) = self.expired_order.pop_front() else { break };
                self.expired.remove(&old);
            }
        }
    }

    /// Ends what outlived its time: records past retention, held labels past their hold.
    pub(super) fn expire(&mut self, model: &str, now: Instant, settings: &JoinSettings) {
        let retention = Duration::from_secs(settings.retention_s);
        while self.order.front().is_some_and(|(_, at)| now.duration_since(*at) > retention) {
            self.evict_oldest_record(settings.index_capacity);
        }
        let hold = Duration::from_secs(settings.hold_s);
        while let Some((id, at)) = self.held_order.front()
            && now.duration_since(*at) > hold
        {
            if self.held.get(id).is_some_and(|(_, held_at)| held_at == at) {
                self.held.remove(id);
                crate::metrics::feedback(model, "unknown");
            }
            self.held_order.pop_front();
        }
    }
}
