//! The `[monitor]` table: what the controller watches beside the load —
//! GPU exporters (NVML samples on the run's timeline) and Prometheus
//! endpoints of the model server (vLLM's running/waiting requests, KV-cache
//! usage...).

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorSection {
    /// `host:port` of each `gpu-exporter`.
    pub gpu_exporters: Vec<String>,
    /// Env var holding the exporters' token (default: `cluster.token_env`).
    pub token_env: Option<String>,
    /// Prometheus text endpoints to scrape (`http://model-host:8000/metrics`).
    pub prometheus: Vec<String>,
    /// Metric names to keep from those endpoints: per scrape, counters are
    /// summed over their label sets, gauges averaged (by `# TYPE`).
    pub prometheus_metrics: Vec<String>,
    /// How often to scrape. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub scrape_interval: Duration,
}

impl Default for MonitorSection {
    fn default() -> Self {
        Self {
            gpu_exporters: Vec::new(),
            token_env: None,
            prometheus: Vec::new(),
            prometheus_metrics: Vec::new(),
            scrape_interval: Duration::from_secs(1),
        }
    }
}

impl MonitorSection {
    /// Checks the section; errors are (key below `monitor.`, problem).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.prometheus.is_empty() && self.prometheus_metrics.is_empty() {
            return Err((
                "prometheus_metrics",
                "name the metrics to keep from the scraped endpoints".into(),
            ));
        }
        if let Some(u) = self
            .prometheus
            .iter()
            .find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
        {
            return Err((
                "prometheus",
                format!("{u:?} must start with http:// or https://"),
            ));
        }
        if self.scrape_interval < Duration::from_millis(100) {
            return Err(("scrape_interval", "must be at least 100ms".into()));
        }
        Ok(())
    }
}
