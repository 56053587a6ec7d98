//! `llm-sim`: the standalone simulated model server. Parses flags, loads the
//! optional `--config` TOML (the `SimConfig` schema), applies flag overrides,
//! serves until Ctrl-C / SIGTERM. All logic is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use barrage_common::simulator::OutputLength;
use barrage_llm_sim::{SimConfig, SimServer};
use clap::Parser;

/// A simulated OpenAI/Ollama-compatible model server with exact, configurable timing.
#[derive(Debug, Parser)]
#[command(name = "llm-sim", version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// TOML file in the simulator schema; the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Model name reported by the server.
    #[arg(long)]
    model: Option<String>,
    /// Base time to first token ("50ms").
    #[arg(long, value_parser = humantime::parse_duration)]
    ttft: Option<Duration>,
    /// Extra prefill time per input token ("20us").
    #[arg(long, value_parser = humantime::parse_duration)]
    prefill_per_token: Option<Duration>,
    /// Inter-token latency ("10ms").
    #[arg(long, value_parser = humantime::parse_duration)]
    itl: Option<Duration>,
    /// Sequences decoding at once; the rest queue (0 = unlimited).
    #[arg(long)]
    max_batch: Option<u32>,
    /// ITL multiplier per additional active sequence.
    #[arg(long)]
    batch_slowdown: Option<f64>,
    /// Tokens per content chunk.
    #[arg(long)]
    tokens_per_chunk: Option<u32>,
    /// Fixed output length when a request gives no max_tokens.
    #[arg(long)]
    output_tokens: Option<u32>,
    /// Reasoning tokens before each answer.
    #[arg(long)]
    reasoning_tokens: Option<u32>,
    /// Send a role-only chunk first.
    #[arg(long)]
    role_chunk: bool,
    /// Put running usage into every chunk.
    #[arg(long)]
    continuous_usage: bool,
    /// Seed for jitter, length and fault draws.
    #[arg(long)]
    seed: Option<u64>,
    /// A Hugging Face tokenizer.json: count input tokens with it (not words).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Chat template for chat requests: a Jinja file or a tokenizer_config.json
    /// (default: the one beside --tokenizer; "none": raw message text).
    #[arg(long)]
    chat_template: Option<PathBuf>,
    /// Model a server prefix cache: cached prompt tokens cost no prefill.
    #[arg(long)]
    prefix_cache: bool,
    /// Tokens per prefix cache block (default 16).
    #[arg(long)]
    prefix_cache_block_tokens: Option<u32>,
    /// Tokens the prefix cache holds, LRU beyond (default 262144).
    #[arg(long)]
    prefix_cache_capacity_tokens: Option<u64>,
}

impl Args {
    fn config(&self) -> anyhow::Result<SimConfig> {
        let mut cfg = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("invalid {}", path.display()))?
            }
            None => SimConfig::default(),
        };
        let set = |slot: &mut _, value: Option<_>| {
            if let Some(v) = value {
                *slot = v;
            }
        };
        if let Some(model) = &self.model {
            cfg.model.clone_from(model);
        }
        set(&mut cfg.ttft, self.ttft);
        set(&mut cfg.prefill_per_token, self.prefill_per_token);
        set(&mut cfg.itl, self.itl);
        if let Some(n) = self.max_batch {
            cfg.max_batch = n;
        }
        if let Some(s) = self.batch_slowdown {
            cfg.batch_slowdown = s;
        }
        if let Some(k) = self.tokens_per_chunk {
            cfg.tokens_per_chunk = k;
        }
        if let Some(n) = self.output_tokens {
            cfg.output_tokens = OutputLength::Fixed(n);
        }
        if let Some(n) = self.reasoning_tokens {
            cfg.reasoning_tokens = n;
        }
        cfg.role_chunk |= self.role_chunk;
        cfg.continuous_usage |= self.continuous_usage;
        if let Some(seed) = self.seed {
            cfg.seed = seed;
        }
        if self.tokenizer.is_some() {
            cfg.tokenizer.clone_from(&self.tokenizer);
        }
        if self.chat_template.is_some() {
            cfg.chat_template.clone_from(&self.chat_template);
        }
        let cache = &mut cfg.prefix_cache;
        cache.enabled |= self.prefix_cache;
        if let Some(n) = self.prefix_cache_block_tokens {
            cache.block_tokens = n;
        }
        if let Some(n) = self.prefix_cache_capacity_tokens {
            cache.capacity_tokens = n;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let cfg = args.config()?;
    let server = SimServer::spawn(cfg, args.listen).await?;
    println!("llm-sim listening on http://{}", server.addr());
    stop_signal().await;
    tracing::info!("stopping");
    server.shutdown().await;
    Ok(())
}
