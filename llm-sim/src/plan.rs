//! The per-request generation plan: everything random about one request
//! (fault draws, output length, TTFT jitter, and later the per-step ITL
//! jitter) comes from one `StdRng` seeded from the config's `seed` and the
//! request's sequence number, so a run is reproducible and needs no shared
//! lock. Also owns the chunk layout (which chunk carries which tokens, where
//! the half-way faults land), the decode-step arithmetic, and input-token
//! counting.

use std::borrow::Cow;
use std::sync::LazyLock;
use std::time::Duration;

use barrage_common::simulator::{Jitter, OutputLength, SimConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp1};

/// The text of one output token: one word and a space.
pub(crate) const TOKEN: &str = "tok ";

/// What a chunk's tokens are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Reasoning,
    Answer,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// The request's max_tokens was reached.
    Length,
    /// The configured length model ended the answer.
    Stop,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Length => "length",
            Finish::Stop => "stop",
        }
    }
}

/// An injected error status answered instead of generating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HttpFault {
    Status500,
    Status429,
}

/// What the request asked for, as far as the plan cares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask {
    pub input_tokens: u64,
    pub max_tokens: Option<u32>,
    /// Whether this API can carry reasoning tokens.
    pub reasoning: bool,
}

/// One request's drawn plan.
#[derive(Debug)]
pub(crate) struct Plan {
    pub input_tokens: u64,
    /// Input tokens found in the prefix cache: no prefill time.
    pub cached_tokens: u64,
    pub reasoning: u32,
    pub answer: u32,
    pub per_chunk: u32,
    pub finish: Finish,
    /// Base TTFT + prefill + jitter; the queue wait comes on top.
    pub ttft: Duration,
    pub cut: bool,
    pub malformed: bool,
    pub stall: bool,
    pub stall_duration: Duration,
    prefill_ns: u64,
    itl_ns: u64,
    itl_jitter: Jitter,
    slowdown: f64,
    rng: StdRng,
}

impl Plan {
    /// Draws the plan of request number `request_no`, or the error status to answer.
    pub fn draw(cfg: &SimConfig, request_no: u64, ask: Ask) -> Result<Plan, HttpFault> {
        let mut rng = StdRng::seed_from_u64(mix(cfg.seed, request_no));
        let f = &cfg.faults;
        let u: f64 = rng.random();
        if u < f.http_500 {
            return Err(HttpFault::Status500);
        }
        if u < f.http_500 + f.http_429 {
            return Err(HttpFault::Status429);
        }
        let cut = rng.random::<f64>() < f.cut;
        let malformed = rng.random::<f64>() < f.malformed;
        let stall = rng.random::<f64>() < f.stall;
        let (answer, finish) = match ask.max_tokens {
            Some(n) if cfg.honour_max_tokens => (n, Finish::Length),
            _ => {
                let n = match cfg.output_tokens {
                    OutputLength::Fixed(n) => n,
                    OutputLength::Uniform { min, max } => rng.random_range(min..=max),
                };
                (n, Finish::Stop)
            }
        };
        let prefill = nanos(cfg.prefill_per_token).saturating_mul(ask.input_tokens);
        let ttft_ns = nanos(cfg.ttft)
            .saturating_add(prefill)
            .saturating_add(jitter_ns(&mut rng, &cfg.ttft_jitter));
        Ok(Plan {
            input_tokens: ask.input_tokens,
            cached_tokens: 0,
            reasoning: if ask.reasoning {
                cfg.reasoning_tokens
            } else {
                0
            },
            answer: answer.max(1),
            per_chunk: cfg.tokens_per_chunk.max(1),
            finish,
            ttft: Duration::from_nanos(ttft_ns),
            cut,
            malformed,
            stall,
            stall_duration: f.stall_duration,
            prefill_ns: nanos(cfg.prefill_per_token),
            itl_ns: nanos(cfg.itl),
            itl_jitter: cfg.itl_jitter.clone(),
            slowdown: cfg.batch_slowdown,
            rng,
        })
    }

    /// Takes `cached` input tokens off the prefill: TTFT = ttft +
    /// prefill_per_token × uncached tokens + jitter.
    pub fn use_cache(&mut self, cached: u64) {
        let cached = cached.min(self.input_tokens);
        self.cached_tokens = cached;
        let saved = Duration::from_nanos(self.prefill_ns.saturating_mul(cached));
        self.ttft = self.ttft.saturating_sub(saved);
    }

    /// Completion tokens: reasoning plus answer.
    pub fn completion_tokens(&self) -> u64 {
        u64::from(self.reasoning) + u64::from(self.answer)
    }

    fn reasoning_chunks(&self) -> u32 {
        self.reasoning.div_ceil(self.per_chunk)
    }

    /// Number of token-bearing chunks.
    pub fn chunks(&self) -> u32 {
        self.reasoning_chunks() + self.answer.div_ceil(self.per_chunk)
    }

    /// What chunk `i` carries (`i < chunks()`).
    pub fn chunk(&self, i: u32) -> (Kind, u32) {
        let k = self.per_chunk;
        let rc = self.reasoning_chunks();
        if i < rc {
            (Kind::Reasoning, k.min(self.reasoning - i * k))
        } else {
            (Kind::Answer, k.min(self.answer - (i - rc) * k))
        }
    }

    /// Position (a chunk index, or `chunks()` for the end) replaced by the cut.
    pub fn cut_at(&self) -> Option<u32> {
        self.cut.then(|| self.chunks().div_ceil(2))
    }

    /// Chunk index written as a malformed chunk.
    pub fn malformed_at(&self) -> Option<u32> {
        self.malformed.then(|| (self.chunks() - 1) / 2)
    }

    /// Position (a chunk index, or `chunks()` for the end) delayed by the stall.
    pub fn stall_at(&self) -> Option<u32> {
        self.stall.then(|| (self.chunks() / 2).max(1))
    }

    /// The time after the previous chunk at which a chunk of `tokens` tokens is
    /// due, with `active` sequences decoding.
    pub fn gap(&mut self, tokens: u32, active: u64) -> Duration {
        let mut ns = self.itl_ns.saturating_mul(u64::from(tokens));
        if self.slowdown > 0.0 && active > 1 {
            let factor = 1.0 + self.slowdown * (active - 1) as f64;
            // `as` saturates; the factor is finite and >= 1.
            ns = (ns as f64 * factor).round() as u64;
        }
        if self.itl_jitter != Jitter::None {
            for _ in 0..tokens {
                ns = ns.saturating_add(jitter_ns(&mut self.rng, &self.itl_jitter));
            }
        }
        Duration::from_nanos(ns)
    }
}

/// Seed of request `n`: distinct, well-spread streams per (seed, n).
fn mix(seed: u64, n: u64) -> u64 {
    splitmix(seed ^ splitmix(n))
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A duration in nanoseconds, saturating.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn jitter_ns(rng: &mut StdRng, jitter: &Jitter) -> u64 {
    match jitter {
        Jitter::None => 0,
        Jitter::Uniform { max } => rng.random_range(0..=nanos(*max)),
        Jitter::Exponential { mean } => {
            let x: f64 = Exp1.sample(rng);
            (x * nanos(*mean) as f64).round() as u64
        }
    }
}

/// Whitespace-separated words of a text.
pub(crate) fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Input tokens from counted words (scaled, rounded up) and literal token ids; at least 1.
pub(crate) fn input_tokens(words: u64, token_ids: u64, tokens_per_word: f64) -> u64 {
    let scaled = (words as f64 * tokens_per_word).ceil() as u64;
    scaled.saturating_add(token_ids).max(1)
}

static TOKENS: LazyLock<String> = LazyLock::new(|| TOKEN.repeat(256));

/// The text of `n` output tokens.
pub(crate) fn token_text(n: u32) -> Cow<'static, str> {
    let len = n as usize * TOKEN.len();
    match TOKENS.get(..len) {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(TOKEN.repeat(n as usize)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use barrage_common::simulator::Faults;

    fn ask(max_tokens: Option<u32>) -> Ask {
        Ask {
            input_tokens: 10,
            max_tokens,
            reasoning: true,
        }
    }

    #[test]
    fn layout_splits_reasoning_and_answer_and_places_faults() {
        let cfg = SimConfig {
            tokens_per_chunk: 3,
            reasoning_tokens: 4,
            faults: Faults {
                cut: 1.0,
                malformed: 1.0,
                stall: 1.0,
                ..Faults::default()
            },
            ..SimConfig::default()
        };
        let plan = Plan::draw(&cfg, 0, ask(Some(7))).expect("no http fault");
        let layout: Vec<_> = (0..plan.chunks()).map(|i| plan.chunk(i)).collect();
        use Kind::*;
        assert_eq!(
            layout,
            [
                (Reasoning, 3),
                (Reasoning, 1),
                (Answer, 3),
                (Answer, 3),
                (Answer, 1)
            ]
        );
        assert_eq!(plan.completion_tokens(), 11);
        assert_eq!(plan.finish, Finish::Length);
        assert_eq!(
            (plan.malformed_at(), plan.cut_at(), plan.stall_at()),
            (Some(2), Some(3), Some(2))
        );
    }

    #[test]
    fn draws_are_reproducible_and_follow_the_probabilities() {
        let cfg = SimConfig {
            seed: 7,
            output_tokens: OutputLength::Uniform { min: 5, max: 9 },
            ttft_jitter: Jitter::Uniform {
                max: Duration::from_millis(3),
            },
            faults: Faults {
                http_500: 0.2,
                cut: 0.5,
                ..Faults::default()
            },
            ..SimConfig::default()
        };
        let summary = |n: u64| match Plan::draw(&cfg, n, ask(None)) {
            Err(fault) => format!("{fault:?}"),
            Ok(p) => format!("{} {} {:?}", p.answer, p.cut, p.ttft),
        };
        let a: Vec<_> = (0..1000).map(summary).collect();
        let b: Vec<_> = (0..1000).map(summary).collect();
        assert_eq!(a, b);
        let errors = a.iter().filter(|s| s.starts_with("Status500")).count();
        assert!((140..=260).contains(&errors), "{errors}");
        for n in 0..200 {
            if let Ok(p) = Plan::draw(&cfg, n, ask(None)) {
                assert!((5..=9).contains(&p.answer));
                assert!(p.ttft >= cfg.ttft && p.ttft <= cfg.ttft + Duration::from_millis(3));
                assert_eq!(p.finish, Finish::Stop);
            }
        }
    }

    #[test]
    fn gaps_scale_with_tokens_and_batch() {
        let cfg = SimConfig {
            itl: Duration::from_millis(10),
            batch_slowdown: 0.5,
            ..SimConfig::default()
        };
        let mut plan = Plan::draw(&cfg, 0, ask(Some(4))).expect("plan");
        assert_eq!(plan.gap(3, 1), Duration::from_millis(30));
        assert_eq!(plan.gap(1, 3), Duration::from_millis(20));
    }

    #[test]
    fn counts_tokens() {
        assert_eq!(words("  a b\tc\n d "), 4);
        assert_eq!(input_tokens(0, 0, 1.0), 1);
        assert_eq!(input_tokens(3, 0, 1.3), 4);
        assert_eq!(input_tokens(2, 5, 1.0), 7);
        assert_eq!(token_text(2), "tok tok ");
        assert_eq!(token_text(300).len(), 1200);
    }
}
