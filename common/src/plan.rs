//! The test plan: the TOML schema (`PlanFile`, unknown keys refused), loading
//! with figment (file, then `BARRAGE_`-prefixed environment overrides), and
//! validation into a `Plan` whose errors name the key and the problem.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

pub use crate::dataset::{DatasetKind, DatasetSection};
pub use crate::load::{ArrivalKind, LoadMode, LoadSection, RateValue, StageSpec};
use crate::monitor::MonitorSection;
use crate::simulator::SimConfig;
use crate::thresholds::{Subject, ThresholdsSection};

/// Top-level tables a plan may have; environment overrides outside them are
/// ignored so unrelated `BARRAGE_*` variables (tokens) never break a plan.
pub const SECTIONS: &[&str] = &[
    "name",
    "target",
    "request",
    "dataset",
    "conversation",
    "load",
    "cluster",
    "output",
    "metrics",
    "simulator",
    "thresholds",
    "monitor",
    "slo",
    "sweep",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    #[serde(default = "default_name")]
    pub name: String,
    #[serde(default)]
    pub target: TargetSection,
    #[serde(default)]
    pub request: RequestSection,
    #[serde(default)]
    pub dataset: DatasetSection,
    /// Present: conversations are replayed turn by turn.
    pub conversation: Option<crate::conversation::ConversationSection>,
    pub load: LoadSection,
    #[serde(default)]
    pub cluster: ClusterSection,
    #[serde(default)]
    pub output: OutputSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    /// GPU exporters and server metrics on the run's timeline.
    #[serde(default)]
    pub monitor: MonitorSection,
    /// Limits that decide the exit status (CI verdicts).
    #[serde(default)]
    pub thresholds: ThresholdsSection,
    /// Service-level objectives: per-request limits on ttft / ttfo / tpot /
    /// e2e / max_stall define goodput; a sweep's SLO search keeps them all.
    #[serde(default)]
    pub slo: ThresholdsSection,
    /// A matrix of steps, or an SLO search.
    pub sweep: Option<crate::sweep::SweepSection>,
    /// Present (and `target.url` absent): the controller starts the built-in
    /// simulator in-process on an ephemeral loopback port and targets it.
    pub simulator: Option<SimConfig>,
}

fn default_name() -> String {
    "barrage-run".to_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ApiKind {
    #[default]
    OpenaiChat,
    OpenaiCompletions,
    OllamaGenerate,
    OllamaChat,
    /// `/v1/embeddings`: latency and input tokens (never streamed).
    OpenaiEmbeddings,
    /// Any JSON-over-HTTP API, described by `[target.template]`.
    Template,
}

impl ApiKind {
    /// The name a plan uses (`api = "openai-chat"`), for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiKind::OpenaiChat => "openai-chat",
            ApiKind::OpenaiCompletions => "openai-completions",
            ApiKind::OllamaGenerate => "ollama-generate",
            ApiKind::OllamaChat => "ollama-chat",
            ApiKind::OpenaiEmbeddings => "openai-embeddings",
            ApiKind::Template => "template",
        }
    }
}

/// `[target.template]`: a request body with placeholders and JSON pointers
/// (RFC 6901) into the response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TemplateSection {
    /// JSON with placeholders: `%m` model, `%p` prompt text, `%messages`
    /// (the messages array), `%max_tokens`.
    pub body: String,
    /// "sse" (default), "ndjson" or "json" (one body).
    #[serde(default)]
    pub format: Option<String>,
    /// Where each chunk (or the body) keeps generated text, e.g. "/choices/0/delta/content".
    pub text: String,
    pub reasoning: Option<String>,
    pub prompt_tokens: Option<String>,
    pub completion_tokens: Option<String>,
    /// A pointer whose truthy value marks the last chunk, e.g. "/done".
    pub done: Option<String>,
    /// A whole event meaning "end" (default "[DONE]").
    pub done_marker: Option<String>,
}

impl ApiKind {
    /// The path appended to a bare `http://host:port` URL.
    pub fn default_path(self) -> &'static str {
        match self {
            ApiKind::OpenaiChat => "/v1/chat/completions",
            ApiKind::OpenaiCompletions => "/v1/completions",
            ApiKind::OllamaGenerate => "/api/generate",
            ApiKind::OllamaChat => "/api/chat",
            ApiKind::OpenaiEmbeddings => "/v1/embeddings",
            ApiKind::Template => "",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TargetSection {
    /// Full endpoint URL, or `http://host:port` to which the API's path is added.
    pub url: Option<String>,
    pub api: ApiKind,
    pub model: Option<String>,
    /// Name of the environment variable holding the API key (never the key itself).
    pub api_key_env: Option<String>,
    /// Extra request headers. Values are sent, never logged or reported.
    pub headers: BTreeMap<String, String>,
    pub stream: bool,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Request usage in the stream (`stream_options.include_usage`).
    pub include_usage: bool,
    /// Connection setup limit. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest silence between two chunks of a stream (default: none).
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// "1.1" (default, keep-alive) or "2" (HTTP/2; prior knowledge on http://).
    pub http_version: String,
    /// For `api = "template"`.
    pub template: Option<TemplateSection>,
}

impl Default for TargetSection {
    fn default() -> Self {
        Self {
            url: None,
            api: ApiKind::default(),
            model: None,
            api_key_env: None,
            headers: BTreeMap::new(),
            stream: true,
            timeout: Duration::from_secs(300),
            include_usage: true,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: None,
            http_version: "1.1".to_owned(),
            template: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestSection {
    pub max_tokens: u32,
    pub temperature: Option<f64>,
    /// vLLM extension: keep generating past EOS (sent only when true).
    pub ignore_eos: bool,
    /// vLLM extension: at least this many tokens.
    pub min_tokens: Option<u32>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<Vec<String>>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub n: Option<u32>,
    pub logprobs: Option<u32>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    /// Extra JSON object merged (deeply) into every request body.
    pub extra_body: Option<toml::Table>,
}

impl Default for RequestSection {
    fn default() -> Self {
        Self {
            max_tokens: 128,
            temperature: None,
            ignore_eos: false,
            min_tokens: None,
            top_p: None,
            top_k: None,
            seed: None,
            stop: None,
            stop_token_ids: None,
            n: None,
            logprobs: None,
            frequency_penalty: None,
            presence_penalty: None,
            extra_body: None,
        }
    }
}

impl RequestSection {
    /// The sampling parameters as the API spells them, merged under
    /// `extra_body`: OpenAI keys at the top level, Ollama's in `options`.
    pub fn extra_json(&self, api: ApiKind) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::{Value, json};
        let ollama = matches!(api, ApiKind::OllamaGenerate | ApiKind::OllamaChat);
        let mut params = serde_json::Map::new();
        let mut put = |k: &str, v: Value| {
            params.insert(k.to_owned(), v);
        };
        if let Some(v) = self.min_tokens {
            put("min_tokens", json!(v));
        }
        if let Some(v) = self.top_p {
            put("top_p", json!(v));
        }
        if let Some(v) = self.top_k {
            put("top_k", json!(v));
        }
        if let Some(v) = self.seed {
            put("seed", json!(v));
        }
        if let Some(v) = &self.stop {
            put("stop", json!(v));
        }
        if let Some(v) = &self.stop_token_ids {
            put("stop_token_ids", json!(v));
        }
        if let Some(v) = self.n {
            put("n", json!(v));
        }
        if let Some(v) = self.logprobs {
            put("logprobs", json!(v));
        }
        if let Some(v) = self.frequency_penalty {
            put("frequency_penalty", json!(v));
        }
        if let Some(v) = self.presence_penalty {
            put("presence_penalty", json!(v));
        }
        let mut out = serde_json::Map::new();
        if ollama {
            if !params.is_empty() {
                out.insert("options".into(), Value::Object(params));
            }
        } else {
            out = params;
        }
        if let Some(extra) = &self.extra_body
            && let Ok(Value::Object(extra)) = serde_json::to_value(extra)
        {
            deep_merge(&mut out, extra);
        }
        out
    }
}

/// Merges `from` into `into`; objects merge key by key, anything else replaces.
pub fn deep_merge(
    into: &mut serde_json::Map<String, serde_json::Value>,
    from: serde_json::Map<String, serde_json::Value>,
) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(serde_json::Value::Object(a)), serde_json::Value::Object(b)) => deep_merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// Agent addresses (`host:port`). Empty: embedded in-process agents.
    pub agents: Vec<String>,
    /// Number of embedded agents (default: one per core).
    pub embedded_agents: Option<usize>,
    /// Name of the environment variable holding the shared agent token.
    pub token_env: Option<String>,
    /// Start once this many listed agents answer (default: all of them).
    pub min_agents: Option<usize>,
    /// How long to wait for `min_agents` (default 60 s).
    #[serde(with = "humantime_serde")]
    pub agent_wait: Duration,
    /// TLS to agents and GPU exporters: the CA (PEM) that signed their
    /// certificates. Setting it switches the controller to https.
    pub tls_ca: Option<PathBuf>,
    /// Mutual TLS: the controller's certificate and key (PEM).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Name to verify in the agents' certificates (default: the host of each address).
    pub tls_domain: Option<String>,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            agents: Vec::new(),
            embedded_agents: None,
            token_env: None,
            min_agents: None,
            agent_wait: Duration::from_secs(60),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_domain: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputSection {
    /// Each run writes into a new folder below this one.
    pub dir: PathBuf,
    /// Per-request records (results.sqlite, requests.csv). Off for very
    /// large runs: the histograms stay exact either way.
    pub requests: bool,
    /// Keep prompt and response text in the per-request records: `true`
    /// for every request, a number N for the first N of each agent.
    pub save_text: SaveText,
}

impl Default for OutputSection {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("results"),
            requests: true,
            save_text: SaveText::All(false),
        }
    }
}

/// `[output] save_text`: `true`/`false`, or a sample size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SaveText {
    All(bool),
    Sample(u64),
}

impl SaveText {
    /// Requests per agent whose text is kept (u64::MAX: all, 0: none).
    pub fn per_agent(self) -> u64 {
        match self {
            SaveText::All(true) => u64::MAX,
            SaveText::All(false) => 0,
            SaveText::Sample(n) => n,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Length of one interval of the time series.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Significant digits of every histogram (1..=5).
    pub sigfig: u8,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            sigfig: 3,
        }
    }
}

/// A plan that cannot run, naming the key (or file) and the problem.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("plan file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Parse(String),
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
}

fn invalid(key: &str, problem: impl Into<String>) -> PlanError {
    PlanError::Invalid {
        key: key.to_owned(),
        problem: problem.into(),
    }
}

/// Header names must be HTTP tokens and values free of control characters,
/// or every agent fails at prepare. Values may be secrets: never shown.
fn check_headers(headers: &BTreeMap<String, String>) -> Result<(), PlanError> {
    const TCHAR: &str = "!#$%&'*+-.^_`|~";
    for (name, value) in headers {
        let key = format!("target.headers.{name}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || TCHAR.contains(c))
        {
            return Err(invalid(
                &key,
                format!("{name:?} is not a header name (letters, digits and !#$%&'*+-.^_`|~ only)"),
            ));
        }
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(invalid(
                &key,
                "the value holds a control character (e.g. a line break)",
            ));
        }
    }
    Ok(())
}

/// Figment sources of a plan: the file, then `BARRAGE_SECTION__KEY=value`.
pub fn figment_for(path: &Path) -> Figment {
    Figment::new()
        .merge(Toml::file_exact(path))
        .merge(env_overrides())
}

/// `BARRAGE_LOAD__USERS=8` overrides `load.users`; only plan sections count.
pub fn env_overrides() -> Env {
    Env::prefixed("BARRAGE_").split("__").filter(|k| {
        // Keys arrive as written (upper case), split or not depending on figment's order.
        let key = k.as_str().to_ascii_lowercase();
        let first = key.split(['.', '_']).next().unwrap_or("");
        SECTIONS.contains(&first)
    })
}

/// Reads, layers and validates a plan file.
pub fn load(path: &Path) -> Result<PlanFile, PlanError> {
    // figment reports a missing file as an empty source; say it plainly instead.
    std::fs::metadata(path).map_err(|e| PlanError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    from_figment(figment_for(path))
}

/// Extracts and validates a plan from any figment (tests, CLI overrides).
pub fn from_figment(fig: Figment) -> Result<PlanFile, PlanError> {
    let plan: PlanFile = fig.extract().map_err(|e| PlanError::Parse(describe(e)))?;
    plan.validate()?;
    Ok(plan)
}

/// figment's errors, one line each, with the key path and the source.
fn describe(err: figment::Error) -> String {
    err.into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e
                .metadata
                .as_ref()
                .and_then(|m| m.source.as_ref())
                .map(|s| format!(" (in {s})"))
                .unwrap_or_default();
            if key.is_empty() {
                format!("{}{source}", e.kind)
            } else {
                format!("{key}: {}{source}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl PlanFile {
    /// Checks what types cannot: ranges, combinations, files.
    pub fn validate(&self) -> Result<(), PlanError> {
        crate::limits::check(self).map_err(|(key, problem)| invalid(&key, problem))?;
        match (&self.target.url, &self.simulator) {
            (None, None) => {
                return Err(invalid(
                    "target.url",
                    "missing: give the server's URL, or a [simulator] table to use the built-in simulator",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "target.url",
                    "both target.url and [simulator] are set; keep one",
                ));
            }
            (Some(url), None) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(invalid(
                        "target.url",
                        format!("{url:?} must start with http:// or https://"),
                    ));
                }
            }
            (None, Some(sim)) => sim
                .validate()
                .map_err(|e| invalid(&format!("simulator.{}", e.key), e.problem))?,
        }
        match (&self.target.template, self.target.api) {
            (None, ApiKind::Template) => {
                return Err(invalid(
                    "target.template",
                    "api = \"template\" needs a [target.template] table",
                ));
            }
            (Some(_), api) if api != ApiKind::Template => {
                return Err(invalid("target.template", "only for api = \"template\""));
            }
            (Some(t), _) => {
                if !matches!(t.format.as_deref(), None | Some("sse" | "ndjson" | "json")) {
                    return Err(invalid(
                        "target.template.format",
                        "must be \"sse\", \"ndjson\" or \"json\"",
                    ));
                }
                let pointers = [
                    Some(&t.text),
                    t.reasoning.as_ref(),
                    t.prompt_tokens.as_ref(),
                    t.completion_tokens.as_ref(),
                    t.done.as_ref(),
                ];
                if pointers.into_iter().flatten().any(|p| !p.starts_with('/')) {
                    return Err(invalid(
                        "target.template",
                        "JSON pointers start with / (e.g. \"/choices/0/text\")",
                    ));
                }
                if t.body.trim().is_empty() {
                    return Err(invalid("target.template.body", "must not be empty"));
                }
                self.check_template_body(t)?;
            }
            _ => {}
        }
        check_headers(&self.target.headers)?;
        if self.target.http_version != "1.1" && self.target.http_version != "2" {
            return Err(invalid("target.http_version", "must be \"1.1\" or \"2\""));
        }
        if self.target.connect_timeout.is_zero() {
            return Err(invalid(
                "target.connect_timeout",
                "must be greater than zero",
            ));
        }
        if self.target.idle_timeout.is_some_and(|d| d.is_zero()) {
            return Err(invalid("target.idle_timeout", "must be greater than zero"));
        }
        if self.target.timeout.is_zero() {
            return Err(invalid("target.timeout", "must be greater than zero"));
        }
        if let Some(var) = &self.target.api_key_env
            && var.is_empty()
        {
            return Err(invalid(
                "target.api_key_env",
                "must name an environment variable",
            ));
        }
        if let Some(t) = self.request.temperature
            && !(t.is_finite() && t >= 0.0)
        {
            return Err(invalid("request.temperature", "must be a number >= 0"));
        }
        if self.request.max_tokens == 0 {
            return Err(invalid("request.max_tokens", "must be at least 1"));
        }
        self.load
            .validate()
            .map_err(|(key, problem)| invalid(&format!("load.{key}"), problem))?;
        self.dataset
            .validate()
            .map_err(|(key, problem)| invalid(&format!("dataset.{key}"), problem))?;
        self.check_conversation()?;
        if !(1..=5).contains(&self.metrics.sigfig) {
            return Err(invalid("metrics.sigfig", "must be between 1 and 5"));
        }
        if self.metrics.interval < Duration::from_millis(100) {
            return Err(invalid("metrics.interval", "must be at least 100ms"));
        }
        self.monitor
            .validate()
            .map_err(|(key, problem)| invalid(&format!("monitor.{key}"), problem))?;
        if self.slo.abort_on_breach {
            return Err(invalid("slo.abort_on_breach", "belongs in [thresholds]"));
        }
        self.slo
            .checks()
            .map_err(|(key, problem)| invalid(&format!("slo.{key}"), problem))?;
        if let Some(sweep) = &self.sweep {
            sweep
                .validate(self)
                .map_err(|(key, problem)| invalid(&format!("sweep.{key}"), problem))?;
        }
        self.thresholds
            .checks()
            .map_err(|(key, problem)| invalid(&format!("thresholds.{key}"), problem))?;
        self.refuse_unobservable_limits()?;
        self.check_cluster()
    }

    /// `[cluster]`: TLS files that go together, and agent counts.
    fn check_cluster(&self) -> Result<(), PlanError> {
        let c = &self.cluster;
        if c.tls_cert.is_some() != c.tls_key.is_some() {
            return Err(invalid(
                "cluster.tls_cert",
                "tls_cert and tls_key go together (mutual TLS)",
            ));
        }
        if c.tls_cert.is_some() && c.tls_ca.is_none() {
            return Err(invalid(
                "cluster.tls_ca",
                "required with tls_cert: the CA that signed the agents' certificates",
            ));
        }
        if self.cluster.min_agents == Some(0) {
            return Err(invalid("cluster.min_agents", "must be at least 1"));
        }
        if self.cluster.embedded_agents == Some(0) {
            return Err(invalid("cluster.embedded_agents", "must be at least 1"));
        }
        Ok(())
    }

    /// `[conversation]` against the dataset, load and API; without it,
    /// `load.conversations` has nothing to count.
    fn check_conversation(&self) -> Result<(), PlanError> {
        match &self.conversation {
            Some(c) => c
                .validate(&self.dataset, &self.load, self.target.api)
                .map_err(|(key, problem)| invalid(key, problem)),
            None if self.load.conversations.is_some() => Err(invalid(
                "load.conversations",
                "counts multi-turn conversations: add a [conversation] table, or use load.requests",
            )),
            None => Ok(()),
        }
    }

    /// Renders the body with sample values, as the agent will.
    fn check_template_body(&self, t: &TemplateSection) -> Result<(), PlanError> {
        let model = self.target.model.as_deref().unwrap_or("model");
        crate::template::check_body(&t.body, model, self.request.max_tokens)
            .map_err(|e| invalid("target.template.body", e.to_string()))
    }

    /// Whether responses arrive as a stream of chunks: not with `stream =
    /// false`, for embeddings (one body), nor for a template of format "json".
    pub fn streams(&self) -> bool {
        match (self.target.api, &self.target.template) {
            (ApiKind::OpenaiEmbeddings, _) => false,
            (ApiKind::Template, Some(t)) => t.format.as_deref() != Some("json"),
            _ => self.target.stream,
        }
    }

    /// Without streaming, the gaps between chunks cannot be observed: a
    /// limit on them would judge numbers that do not exist.
    fn refuse_unobservable_limits(&self) -> Result<(), PlanError> {
        if self.streams() {
            return Ok(());
        }
        for (section, table) in [("thresholds", &self.thresholds), ("slo", &self.slo)] {
            for check in table.checks().unwrap_or_default() {
                if let Subject::Metric(m, _) = check.subject
                    && !m.observable_unstreamed()
                {
                    return Err(invalid(
                        &format!("{section}.{}", check.key),
                        format!(
                            "{m} cannot be measured: responses are not streamed (target.stream = false, \
                             api = \"openai-embeddings\" or template format \"json\"), so only e2e \
                             (and ttft, equal to it) exist; remove the limit or stream the responses"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The full request URL for a target given by URL.
    /// A query string (`?api_key=…`) stays after the added path.
    pub fn endpoint_url(&self, base: &str) -> String {
        let (base, query) = match base.find(['?', '#']) {
            Some(i) => base.split_at(i),
            None => (base, ""),
        };
        let trimmed = base.trim_end_matches('/');
        let after_scheme = trimmed.split_once("://").map_or(trimmed, |(_, rest)| rest);
        if after_scheme.contains('/') {
            format!("{trimmed}{query}")
        } else {
            format!("{trimmed}{}{query}", self.target.api.default_path())
        }
    }

    /// The plan as TOML, as it will run (for the result folder).
    pub fn to_toml(&self) -> Result<String, PlanError> {
        toml::to_string_pretty(self).map_err(|e| PlanError::Parse(e.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Error is large; Jail's signature dictates it
mod tests {
    use super::*;
    use figment::Jail;

    const MINIMAL: &str = r#"
        [target]
        url = "http://127.0.0.1:8000"
        [load]
        users = 4
        requests = 10
    "#;

    #[test]
    fn api_names_in_reports_are_the_names_plans_use() {
        for api in [
            ApiKind::OpenaiChat,
            ApiKind::OpenaiCompletions,
            ApiKind::OllamaGenerate,
            ApiKind::OllamaChat,
            ApiKind::OpenaiEmbeddings,
            ApiKind::Template,
        ] {
            let plan_name = serde_json::to_value(api).expect("serialises");
            assert_eq!(plan_name.as_str(), Some(api.as_str()));
        }
    }

    fn parse(text: &str) -> Result<PlanFile, PlanError> {
        from_figment(Figment::new().merge(Toml::string(text)))
    }

    #[test]
    fn limits_on_gaps_between_chunks_need_streamed_responses() {
        let plan = |target: &str, limits: &str| {
            format!(
                "[target]\nurl = \"http://127.0.0.1:8000\"\n{target}\n[load]\nusers = 1\nrequests = 1\n{limits}"
            )
        };
        let err = parse(&plan("stream = false", "[thresholds]\ntpot_p99 = \"50ms\""))
            .expect_err("tpot without streaming");
        assert!(err.to_string().contains("thresholds.tpot_p99"), "{err}");
        let err = parse(&plan(
            "api = \"openai-embeddings\"",
            "[slo]\nitl_p50 = \"5ms\"",
        ))
        .expect_err("itl of embeddings");
        assert!(err.to_string().contains("slo.itl_p50"), "{err}");
        parse(&plan(
            "stream = false",
            "[thresholds]\nttft_p99 = \"1s\"\ne2e_p99 = \"1s\"",
        ))
        .expect("ttft and e2e exist without streaming");
        parse(&plan("", "[thresholds]\ntpot_p99 = \"50ms\"")).expect("streamed");
    }

    #[test]
    fn minimal_plan_gets_defaults() {
        let p = parse(MINIMAL).expect("valid");
        assert_eq!(p.load.users, Some(4));
        assert!(p.target.stream && p.target.include_usage);
        assert_eq!(
            p.endpoint_url("http://127.0.0.1:8000"),
            "http://127.0.0.1:8000/v1/chat/completions"
        );
        assert_eq!(
            p.endpoint_url("http://h:1/v1/chat/completions"),
            "http://h:1/v1/chat/completions"
        );
        assert_eq!(
            p.endpoint_url("http://h:1?api_key=k"),
            "http://h:1/v1/chat/completions?api_key=k"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse(&format!("{MINIMAL}\nuserz = 3")).expect_err("unknown");
        assert!(err.to_string().contains("userz"), "{err}");
        let err = parse("[load]\nusers = 1\nrequests = 1\nspeed = 2\n[simulator]\n")
            .expect_err("unknown");
        let msg = err.to_string();
        assert!(msg.contains("speed") && msg.contains("load"), "{msg}");
    }

    #[test]
    fn negative_users_names_the_key() {
        let err = parse(&MINIMAL.replace("users = 4", "users = -4")).expect_err("negative");
        let msg = err.to_string();
        assert!(msg.contains("load.users"), "{msg}");
    }

    #[test]
    fn zero_users_and_no_stop_condition_are_refused() {
        let err = parse(&MINIMAL.replace("users = 4", "users = 0")).expect_err("zero");
        assert_eq!(err.to_string(), "load.users: must be at least 1");
        let err = parse(&MINIMAL.replace("requests = 10", "")).expect_err("unbounded");
        assert!(err.to_string().starts_with("load.duration:"), "{err}");
    }

    #[test]
    fn simulator_and_url_are_exclusive_and_simulator_is_validated() {
        let err = parse(&format!("{MINIMAL}\n[simulator]\n")).expect_err("both");
        assert!(err.to_string().starts_with("target.url"), "{err}");
        let err = parse("[load]\nusers = 1\nrequests = 1\n[simulator.faults]\nhttp_500 = 2.0\n")
            .expect_err("bad p");
        assert!(
            err.to_string().starts_with("simulator.faults.http_500"),
            "{err}"
        );
    }

    #[test]
    fn bad_header_names_and_values_are_refused_without_showing_the_value() {
        let err = parse(&format!(
            "{MINIMAL}\n[target.headers]\n\"bad name\" = \"x\"\n"
        ))
        .expect_err("space in the name");
        assert!(
            err.to_string().starts_with("target.headers.bad name:"),
            "{err}"
        );
        let err = parse(&format!(
            "{MINIMAL}\n[target.headers]\nX-Key = \"sec\\r\\nret\"\n"
        ))
        .expect_err("line break in the value");
        assert!(
            err.to_string().starts_with("target.headers.X-Key:"),
            "{err}"
        );
        assert!(!err.to_string().contains("sec"), "{err}");
    }

    #[test]
    fn unreadable_file_names_the_file() {
        let err = load(Path::new("/nonexistent/plan.toml")).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/plan.toml"), "{err}");
    }

    #[test]
    fn env_overrides_file_and_ignores_unrelated_vars() {
        Jail::expect_with(|jail| {
            jail.create_file("plan.toml", MINIMAL)?;
            jail.set_env("BARRAGE_LOAD__USERS", "9");
            jail.set_env("BARRAGE_TOKEN", "not-a-plan-key");
            let p = load(Path::new("plan.toml")).map_err(|e| e.to_string())?;
            assert_eq!(p.load.users, Some(9));
            Ok(())
        });
    }

    #[test]
    fn syntax_error_names_the_file() {
        Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[load\nusers = 1")?;
            let err = load(Path::new("bad.toml")).expect_err("syntax");
            assert!(err.to_string().contains("bad.toml"), "{err}");
            Ok(())
        });
    }
}
