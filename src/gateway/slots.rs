//! How many requests a replica's engine serves at once, asked of the engine
//! itself when the model's spec sets no `max_concurrency`: llama.cpp's
//! server says `total_slots` on `GET /props` (its `--parallel`). Engines
//! that do not say get the gateway's `default_max_concurrency`.

use std::time::Duration;

/// An engine slower than this to say is taken as not saying.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Most slots believed: an engine's answer above this is not a slot count.
const MAX_SLOTS: u64 = 4096;

/// The engine's slot count, or `None` when it does not say.
pub async fn engine_slots(client: &reqwest::Client, address: &str) -> Option<u32> {
    let resp = client
        .get(format!("http://{address}/props"))
        .timeout(ASK_TIMEOUT)
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let body: serde_json::Value = resp.json().await.ok()?;
    slots_of(&body)
}

/// `total_slots` of a llama.cpp `/props` answer, when it is a usable count.
fn slots_of(props: &serde_json::Value) -> Option<u32> {
    let n = props.get("total_slots")?.as_u64()?;
    (1..=MAX_SLOTS).contains(&n).then_some(n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn total_slots_is_read_and_nonsense_is_not() {
        assert_eq!(
            slots_of(&json!({"total_slots": 4, "model_path": "x"})),
            Some(4)
        );
        assert_eq!(slots_of(&json!({"total_slots": 0})), None);
        assert_eq!(slots_of(&json!({"total_slots": -1})), None);
        assert_eq!(slots_of(&json!({"total_slots": "4"})), None);
        assert_eq!(slots_of(&json!({"detail": "Not Found"})), None);
    }
}
