//! Warm cache entries: model weights kept resident in a host's page cache.

use serde::{Deserialize, Serialize};

/// The coordinator's wish: keep this model's weights warm on the node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WarmSpec {
    pub model: String,
    pub path: String,
    pub lock: bool,
}

/// Whether any warm entry appeared, went, or changed state between two
/// reports: news the coordinator (and an operator waiting on `warm start`)
/// should have at once, not at the next report interval.
pub fn warm_states_changed(before: &[WarmStatus], after: &[WarmStatus]) -> bool {
    before.len() != after.len()
        || after.iter().any(|a| {
            !before
                .iter()
                .any(|b| b.model == a.model && b.path == a.path && b.state == a.state)
        })
}

/// Entries of `asked` (what the node is assigned to keep warm) that became
/// resident or failed between two reports of the node: a fill ended. A fill
/// fast enough to finish between two reports counts too.
pub fn fills_ended<'a>(
    before: &'a [WarmStatus],
    after: &'a [WarmStatus],
    asked: &'a [WarmSpec],
) -> impl Iterator<Item = &'a WarmStatus> + 'a {
    after.iter().filter(move |a| {
        turned_final(before, a) && asked.iter().any(|w| w.model == a.model && w.path == a.path)
    })
}

/// Whether `now` is a fill that turned resident or failed since `before`
/// (the node's previous report): the one way a fill can have ended.
pub fn turned_final(before: &[WarmStatus], now: &WarmStatus) -> bool {
    matches!(now.state.as_str(), "resident" | "failed")
        && !before
            .iter()
            .any(|b| b.model == now.model && b.path == now.path && b.state == now.state)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct WarmStatus {
    pub model: String,
    pub path: String,
    pub resident_bytes: u64,
    pub total_bytes: u64,
    /// warming | resident | partial | evicting | failed
    pub state: String,
    pub rate_bytes_per_s: f64,
    pub eta_ms: u64,
    pub error: String,
    pub locked: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(model: &str, state: &str) -> WarmStatus {
        WarmStatus {
            model: model.into(),
            path: format!("/m/{model}"),
            state: state.into(),
            ..WarmStatus::default()
        }
    }

    #[test]
    fn a_state_change_is_news_and_progress_alone_is_not() {
        let before = [entry("a", "warming")];
        let mut progressed = entry("a", "warming");
        progressed.resident_bytes = 1 << 30;
        assert!(!warm_states_changed(&before, &[progressed]));
        assert!(warm_states_changed(&before, &[entry("a", "resident")]));
        assert!(warm_states_changed(&before, &[]));
        assert!(warm_states_changed(
            &before,
            &[entry("a", "warming"), entry("b", "warming")]
        ));
    }

    #[test]
    fn only_a_fill_that_turned_resident_or_failed_since_the_last_report_turned_final() {
        let before = [entry("a", "warming"), entry("b", "resident")];
        assert!(turned_final(&before, &entry("a", "resident")));
        assert!(turned_final(&before, &entry("a", "failed")));
        assert!(
            turned_final(&before, &entry("c", "resident")),
            "new and already done"
        );
        assert!(
            !turned_final(&before, &entry("b", "resident")),
            "resident before"
        );
        assert!(!turned_final(&before, &entry("a", "warming")));
        assert!(!turned_final(&before, &entry("a", "partial")));
    }

    #[test]
    fn a_fill_ends_once_and_only_for_what_was_asked() {
        let asked: Vec<WarmSpec> = ["a", "c", "d"]
            .iter()
            .map(|m| WarmSpec {
                model: m.to_string(),
                path: format!("/m/{m}"),
                lock: false,
            })
            .collect();
        let before = [
            entry("a", "warming"),
            entry("b", "partial"),
            entry("c", "warming"),
        ];
        let after = [
            entry("a", "resident"),
            entry("b", "resident"),
            entry("c", "failed"),
            entry("d", "resident"),
        ];
        let ended: Vec<&str> = fills_ended(&before, &after, &asked)
            .map(|w| w.model.as_str())
            .collect();
        // b is kept for a replica, not asked warm: its measurement is no
        // news; d filled between two reports.
        assert_eq!(ended, ["a", "c", "d"]);
        assert_eq!(fills_ended(&after, &after, &asked).count(), 0, "once");
    }
}
