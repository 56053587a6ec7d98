//! The `[simulator]` table of a plan, which is also `llm-sim`'s configuration:
//! one schema for the embedded simulator and the standalone binary.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Timing, shape and fault model of the simulated model server.
///
/// All durations are humantime strings in TOML ("50ms", "1.5s").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Model name reported by `/v1/models` and in responses.
    pub model: String,
    /// Base time to first token. Default 50 ms.
    #[serde(with = "humantime_serde")]
    pub ttft: Duration,
    /// Extra prefill time per input token. Default 0.
    #[serde(with = "humantime_serde")]
    pub prefill_per_token: Duration,
    /// Random jitter added to each TTFT. Default none.
    pub ttft_jitter: Jitter,
    /// Inter-token latency (decode step). Default 10 ms.
    #[serde(with = "humantime_serde")]
    pub itl: Duration,
    /// Random jitter added to each decode step. Default none.
    pub itl_jitter: Jitter,
    /// Tokens carried by each content chunk (>1 mimics speculative decoding). Default 1.
    pub tokens_per_chunk: u32,
    /// Output length when the request gives no max_tokens. Default 64.
    pub output_tokens: OutputLength,
    /// Honour the request's max_tokens as the exact output length. Default true.
    pub honour_max_tokens: bool,
    /// At most this many sequences decode at once; the rest queue (0 = unlimited). Default 0.
    pub max_batch: u32,
    /// ITL multiplier per additional active sequence: itl * (1 + slowdown * (active - 1)). Default 0.
    pub batch_slowdown: f64,
    /// Send a role-only first chunk before any content (as vLLM does). Default false.
    pub role_chunk: bool,
    /// Reasoning tokens (`reasoning_content` deltas) emitted before the answer. Default 0.
    pub reasoning_tokens: u32,
    /// Put `usage` into every chunk (vLLM's continuous_usage_stats). Default false.
    pub continuous_usage: bool,
    /// Input tokens counted per whitespace-separated word of the prompt. Default 1.0.
    pub tokens_per_word: f64,
    /// A Hugging Face `tokenizer.json`: input tokens are counted with it, as a
    /// real server counts them, instead of words (default none; in a plan,
    /// relative to its folder).
    pub tokenizer: Option<PathBuf>,
    /// The chat template chat requests are rendered with before counting: a
    /// Jinja file or a `tokenizer_config.json` (default none: the one beside
    /// `tokenizer`, as `[dataset] chat_template`; `"none"`: each message's
    /// raw text). Needs `tokenizer`.
    pub chat_template: Option<PathBuf>,
    /// A server prefix cache (vLLM's automatic prefix caching): prompt
    /// tokens found in it cost no prefill time. Default disabled.
    pub prefix_cache: PrefixCache,
    /// Faults injected on demand.
    pub faults: Faults,
    /// Seed for jitter, length and fault draws. Default 0.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            model: "llm-sim".to_owned(),
            ttft: Duration::from_millis(50),
            prefill_per_token: Duration::ZERO,
            ttft_jitter: Jitter::None,
            itl: Duration::from_millis(10),
            itl_jitter: Jitter::None,
            tokens_per_chunk: 1,
            output_tokens: OutputLength::Fixed(64),
            honour_max_tokens: true,
            max_batch: 0,
            batch_slowdown: 0.0,
            role_chunk: false,
            reasoning_tokens: 0,
            continuous_usage: false,
            tokens_per_word: 1.0,
            tokenizer: None,
            chat_template: None,
            prefix_cache: PrefixCache::default(),
            faults: Faults::default(),
            seed: 0,
        }
    }
}

/// The simulated server's prefix cache: prompts are cut into blocks of
/// `block_tokens`, each identified by its content and everything before it;
/// a request's leading blocks already in the cache skip prefill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrefixCache {
    /// Model the cache at all. Default false.
    pub enabled: bool,
    /// Tokens per cache block (vLLM's `--block-size`). Default 16.
    pub block_tokens: u32,
    /// Tokens the cache holds, shared by all requests; least recently used
    /// blocks are evicted beyond it. Default 262144.
    pub capacity_tokens: u64,
}

impl Default for PrefixCache {
    fn default() -> Self {
        Self {
            enabled: false,
            block_tokens: 16,
            capacity_tokens: 262_144,
        }
    }
}

/// Most blocks a prefix cache may hold (its index is in memory).
pub const MAX_CACHE_BLOCKS: u64 = 1 << 24;

impl PrefixCache {
    fn validate(&self) -> Result<(), SimConfigError> {
        let err = |key, problem: String| Err(SimConfigError { key, problem });
        let block = u64::from(self.block_tokens);
        if block == 0 {
            return err("prefix_cache.block_tokens", "must be at least 1".into());
        }
        if block > u64::from(MAX_TOKENS) {
            let problem = format!("must be at most {MAX_TOKENS} (got {block})");
            return err("prefix_cache.block_tokens", problem);
        }
        if self.capacity_tokens < block {
            let problem = format!(
                "must hold at least one block of block_tokens = {block} (got {})",
                self.capacity_tokens
            );
            return err("prefix_cache.capacity_tokens", problem);
        }
        if self.capacity_tokens / block > MAX_CACHE_BLOCKS {
            let problem = format!(
                "must be at most {MAX_CACHE_BLOCKS} blocks of block_tokens = {block} (got {})",
                self.capacity_tokens
            );
            return err("prefix_cache.capacity_tokens", problem);
        }
        Ok(())
    }
}

/// A random addition to a duration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "kind")]
pub enum Jitter {
    #[default]
    None,
    /// Uniform in [0, max].
    Uniform {
        #[serde(with = "humantime_serde")]
        max: Duration,
    },
    /// Exponential with the given mean (a long right tail).
    Exponential {
        #[serde(with = "humantime_serde")]
        mean: Duration,
    },
}

/// Output length model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", untagged)]
pub enum OutputLength {
    /// Always this many tokens.
    Fixed(u32),
    /// Uniform in [min, max].
    Uniform { min: u32, max: u32 },
}

/// Fault injection. Fractions are probabilities per request in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Answer HTTP 500 instead of generating.
    pub http_500: f64,
    /// Answer HTTP 429 instead of generating.
    pub http_429: f64,
    /// Close the stream half-way through the output (no `[DONE]`).
    pub cut: f64,
    /// Send one malformed (non-JSON) chunk half-way through the output.
    pub malformed: f64,
    /// Pause half-way through the output for `stall_duration`.
    pub stall: f64,
    #[serde(with = "humantime_serde")]
    pub stall_duration: Duration,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            http_500: 0.0,
            http_429: 0.0,
            cut: 0.0,
            malformed: 0.0,
            stall: 0.0,
            stall_duration: Duration::from_secs(1),
        }
    }
}

/// A value of the simulator table that cannot work.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("simulator.{key}: {problem}")]
pub struct SimConfigError {
    pub key: &'static str,
    pub problem: String,
}

impl SimConfig {
    /// Checks values serde cannot: ranges and probabilities.
    pub fn validate(&self) -> Result<(), SimConfigError> {
        let err = |key, problem: &str| {
            Err(SimConfigError {
                key,
                problem: problem.to_owned(),
            })
        };
        self.check_limits()?;
        self.prefix_cache.validate()?;
        if self.chat_template.is_some() && self.tokenizer.is_none() {
            return err(
                "chat_template",
                "needs tokenizer: the rendered template is counted with it",
            );
        }
        if self.tokens_per_chunk == 0 {
            return err("tokens_per_chunk", "must be at least 1");
        }
        if let OutputLength::Uniform { min, max } = self.output_tokens
            && min > max
        {
            return err("output_tokens", "min must not exceed max");
        }
        if !(self.batch_slowdown.is_finite() && self.batch_slowdown >= 0.0) {
            return err("batch_slowdown", "must be a finite number >= 0");
        }
        if !(self.tokens_per_word.is_finite() && self.tokens_per_word > 0.0) {
            return err("tokens_per_word", "must be a finite number > 0");
        }
        let f = &self.faults;
        for (key, p) in [
            ("faults.http_500", f.http_500),
            ("faults.http_429", f.http_429),
            ("faults.cut", f.cut),
            ("faults.malformed", f.malformed),
            ("faults.stall", f.stall),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return err(key, "must be a probability between 0 and 1");
            }
        }
        if f.http_500 + f.http_429 > 1.0 {
            return err("faults", "http_500 + http_429 must not exceed 1");
        }
        Ok(())
    }
}

/// Longest simulated delay (per token, per step, or once).
pub const MAX_DELAY: Duration = Duration::from_secs(3600);
/// Most tokens a simulated response carries (the token histograms' top).
pub const MAX_TOKENS: u32 = 10_000_000;

impl SimConfig {
    /// Values whose arithmetic would overflow (delay × tokens × batch).
    fn check_limits(&self) -> Result<(), SimConfigError> {
        let too_long = |key: &'static str, d: Duration| {
            (d > MAX_DELAY).then(|| SimConfigError {
                key,
                problem: format!(
                    "must be at most {} (got {})",
                    humantime::format_duration(MAX_DELAY),
                    humantime::format_duration(d)
                ),
            })
        };
        let jitter = |j: &Jitter| match j {
            Jitter::None => Duration::ZERO,
            Jitter::Uniform { max } => *max,
            Jitter::Exponential { mean } => *mean,
        };
        let delays = [
            ("ttft", self.ttft),
            ("prefill_per_token", self.prefill_per_token),
            ("itl", self.itl),
            ("ttft_jitter", jitter(&self.ttft_jitter)),
            ("itl_jitter", jitter(&self.itl_jitter)),
            ("faults.stall_duration", self.faults.stall_duration),
        ];
        if let Some(e) = delays.into_iter().find_map(|(k, d)| too_long(k, d)) {
            return Err(e);
        }
        let longest = match self.output_tokens {
            OutputLength::Fixed(n) => n,
            OutputLength::Uniform { max, .. } => max,
        };
        for (key, n) in [
            ("output_tokens", longest),
            ("reasoning_tokens", self.reasoning_tokens),
            ("tokens_per_chunk", self.tokens_per_chunk),
        ] {
            if n > MAX_TOKENS {
                return Err(SimConfigError {
                    key,
                    problem: format!("must be at most {MAX_TOKENS} (got {n})"),
                });
            }
        }
        let ranges = [
            ("batch_slowdown", self.batch_slowdown, 0.0, 1000.0),
            ("tokens_per_word", self.tokens_per_word, 0.001, 1000.0),
        ];
        for (key, v, min, max) in ranges {
            if !(min..=max).contains(&v) {
                return Err(SimConfigError {
                    key,
                    problem: format!(
                        "must be between {min} and {max} (got {})",
                        crate::limits::show(v)
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_humantime_and_tagged_jitter() {
        let cfg: SimConfig = toml::from_str(
            r#"
            ttft = "20ms"
            itl = "5ms"
            ttft_jitter = { kind = "uniform", max = "2ms" }
            output_tokens = { min = 4, max = 8 }
            [faults]
            http_500 = 0.1
            "#,
        )
        .expect("valid table");
        assert_eq!(cfg.ttft, Duration::from_millis(20));
        assert_eq!(
            cfg.ttft_jitter,
            Jitter::Uniform {
                max: Duration::from_millis(2)
            }
        );
        assert_eq!(cfg.output_tokens, OutputLength::Uniform { min: 4, max: 8 });
        assert_eq!(cfg.faults.http_500, 0.1);
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn rejects_unknown_key_and_bad_probability() {
        let e = toml::from_str::<SimConfig>("ttfx = \"1ms\"").expect_err("unknown key");
        assert!(e.to_string().contains("ttfx"), "{e}");
        let cfg = SimConfig {
            faults: Faults {
                cut: 1.5,
                ..Faults::default()
            },
            ..SimConfig::default()
        };
        assert_eq!(
            cfg.validate().expect_err("bad probability").key,
            "faults.cut"
        );
    }

    #[test]
    fn prefix_cache_parses_and_rejects_unusable_sizes() {
        let cfg: SimConfig = toml::from_str(
            "prefix_cache = { enabled = true, block_tokens = 8, capacity_tokens = 64 }",
        )
        .expect("valid table");
        assert!(cfg.prefix_cache.enabled);
        assert!(cfg.validate().is_ok());
        let bad = |block_tokens, capacity_tokens| {
            let cfg = SimConfig {
                prefix_cache: PrefixCache {
                    enabled: true,
                    block_tokens,
                    capacity_tokens,
                },
                ..SimConfig::default()
            };
            cfg.validate().expect_err("refused").to_string()
        };
        assert!(bad(0, 64).starts_with("simulator.prefix_cache.block_tokens"));
        assert!(bad(16, 8).starts_with("simulator.prefix_cache.capacity_tokens"));
        assert!(bad(1, u64::MAX).starts_with("simulator.prefix_cache.capacity_tokens"));
        let e = toml::from_str::<SimConfig>("prefix_cache = { size = 1 }").expect_err("unknown");
        assert!(e.to_string().contains("size"), "{e}");
    }
}
