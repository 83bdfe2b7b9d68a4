//! The event log: what the fleet did or decided, typed, kept in memory
//! (bounded), broadcast to followers and saved to the store once a tick.

use crate::api::Event;
use crate::domain::{unix_ms_now, EventKind};

use super::fleet::Fleet;

impl Fleet {
    /// Records an event: kept in memory (bounded), broadcast to followers and
    /// saved to the store at the end of the tick. It is kept typed; its
    /// `kind` and `message` are its rendering, for display.
    pub(super) fn record(&mut self, what: EventKind) {
        let now = unix_ms_now();
        let subject = what.subject();
        let event = Event {
            seq: self.next_event_seq,
            time: crate::api::rfc3339(now),
            time_unix_ms: now,
            kind: what.name().to_string(),
            model: subject.model.to_string(),
            node: subject.node.to_string(),
            replica: subject.replica.to_string(),
            message: what.message(),
            detail: Some(what),
        };
        self.next_event_seq += 1;
        tracing::info!(
            kind = event.kind,
            model = event.model,
            node = event.node,
            replica_id = event.replica,
            "{}",
            event.message
        );
        let _ = self.event_tx.send(event.clone());
        self.events.push_back(event.clone());
        while self.events.len() > self.settings.event_capacity {
            self.events.pop_front();
        }
        self.unsaved_events.push(event);
    }

    pub(super) fn flush_events(&mut self) {
        if self.unsaved_events.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.unsaved_events);
        if let Err(e) = self
            .store
            .append_events(&events, self.settings.event_capacity)
        {
            tracing::warn!(error = %e, "could not save {} events", events.len());
        }
    }
}
