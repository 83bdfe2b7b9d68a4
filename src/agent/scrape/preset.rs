//! Engine presets: which of an engine's metrics mean waiting, running, latency,
//! KV-cache use and finished requests. One file per engine; this file names them.

use super::histogram::CumulativeHistogram;
use super::prom::Exposition;
use super::{generic, llamacpp, sglang, tgi, triton, vllm};

/// Preset names a model spec may use (`[server] preset`).
pub const PRESETS: &[&str] = &["vllm", "tgi", "triton", "sglang", "llamacpp", "generic"];

/// What one scrape says, in the common vocabulary. Gauges are read as they
/// are; cumulative values are turned into window deltas by the caller.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reading {
    pub waiting: Option<f64>,
    pub running: Option<f64>,
    /// Fraction of the KV cache in use, 0..=1.
    pub kv_cache_usage: Option<f64>,
    /// End-to-end request latency histogram, seconds.
    pub latency: Option<CumulativeHistogram>,
    /// 95th percentile the engine computed itself (a summary), seconds.
    pub latency_p95: Option<f64>,
    /// Finished requests (counter).
    pub completed: Option<f64>,
    /// Work done, in the engine's own units (tokens processed, decode
    /// steps): a counter that moves with every request, also for engines
    /// that count no finished requests. Only its movement matters.
    pub work: Option<f64>,
    /// Cumulative request time, seconds, and the requests it covers.
    pub latency_seconds: Option<f64>,
    pub latency_requests: Option<f64>,
    /// Cumulative time requests spent executing, seconds.
    pub busy_seconds: Option<f64>,
}

impl Reading {
    /// True when the scrape had none of the preset's metrics.
    pub fn is_empty(&self) -> bool {
        *self == Reading::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Vllm,
    Tgi,
    Triton,
    Sglang,
    Llamacpp,
    Generic,
}

impl Engine {
    pub fn from_name(name: &str) -> Option<Engine> {
        Some(match name {
            "vllm" => Engine::Vllm,
            "tgi" => Engine::Tgi,
            "triton" => Engine::Triton,
            "sglang" => Engine::Sglang,
            "llamacpp" => Engine::Llamacpp,
            "generic" => Engine::Generic,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Engine::Vllm => "vllm",
            Engine::Tgi => "tgi",
            Engine::Triton => "triton",
            Engine::Sglang => "sglang",
            Engine::Llamacpp => "llamacpp",
            Engine::Generic => "generic",
        }
    }

    pub fn read(self, exposition: &Exposition) -> Reading {
        match self {
            Engine::Vllm => vllm::read(exposition),
            Engine::Tgi => tgi::read(exposition),
            Engine::Triton => triton::read(exposition),
            Engine::Sglang => sglang::read(exposition),
            Engine::Llamacpp => llamacpp::read(exposition),
            Engine::Generic => generic::read(exposition),
        }
    }

    /// How to make the engine serve metrics, for a scrape it refuses.
    pub fn metrics_hint(self) -> String {
        let preset = self.name().parse::<crate::config::Preset>();
        match preset.ok().and_then(|p| p.metrics_flag()) {
            Some(flag) => format!("start the engine with {flag}"),
            None => "check that the engine serves metrics and the preset is right".to_string(),
        }
    }

    /// The metrics the preset reads, for the message when none is found.
    pub fn looked_for(self) -> &'static [&'static str] {
        match self {
            Engine::Vllm => vllm::LOOKED_FOR,
            Engine::Tgi => tgi::LOOKED_FOR,
            Engine::Triton => triton::LOOKED_FOR,
            Engine::Sglang => sglang::LOOKED_FOR,
            Engine::Llamacpp => llamacpp::LOOKED_FOR,
            Engine::Generic => generic::LOOKED_FOR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_preset_has_an_engine_with_that_name() {
        for name in PRESETS {
            assert_eq!(Engine::from_name(name).map(Engine::name), Some(*name));
        }
        assert_eq!(Engine::from_name("VLLM"), None);
    }
}
