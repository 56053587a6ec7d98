//! The `[conversation]` table: replay conversations turn by turn. Each
//! user turn is one request carrying the history so far, the server's
//! actual replies included; a think time separates a reply from the next
//! turn. Present, it turns multi-turn replay on.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::dataset::{DatasetKind, DatasetSection};
use crate::load::{LoadMode, LoadSection};
use crate::plan::ApiKind;

/// How think times are drawn around their mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ThinkTimeDistribution {
    /// Every think time is the mean.
    #[default]
    Constant,
    /// Exponential with the mean (many short pauses, a few long ones).
    Exponential,
    /// Uniform in [0, 2 × mean].
    Uniform,
}

/// The `[conversation]` table. Every key has a default; unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ConversationSection {
    /// `random` dataset: user turns per synthetic conversation (default 4),
    /// each of `[dataset] input_tokens`. File datasets: at most this many
    /// user turns of each conversation (default: all of them).
    pub turns: Option<u32>,
    /// Pause between a reply and the next turn: the mean (default 0s).
    #[serde(with = "humantime_serde")]
    pub think_time: Duration,
    /// `constant` (default), `exponential` or `uniform` (in [0, 2 × mean]).
    pub think_time_distribution: ThinkTimeDistribution,
}

/// Synthetic conversations' turns when `turns` is not given.
pub const DEFAULT_SYNTHETIC_TURNS: u32 = 4;

type Problem = (&'static str, String);

impl ConversationSection {
    /// User turns of a synthetic conversation.
    pub fn synthetic_turns(&self) -> u32 {
        self.turns.unwrap_or(DEFAULT_SYNTHETIC_TURNS)
    }

    /// Checks the table against the rest of the plan; the key is relative
    /// to the plan (`conversation.turns`, `load.mode`, ...).
    pub fn validate(
        &self,
        dataset: &DatasetSection,
        load: &LoadSection,
        api: ApiKind,
    ) -> Result<(), Problem> {
        if self.turns == Some(0) {
            return Err(("conversation.turns", "must be at least 1".into()));
        }
        if !matches!(
            dataset.kind,
            DatasetKind::Random
                | DatasetKind::ShareGpt
                | DatasetKind::Messages
                | DatasetKind::JsonlChat
        ) {
            return Err((
                "dataset.kind",
                format!(
                    "{:?} holds single prompts; [conversation] replays sharegpt, messages or jsonl-chat conversations, or random ones",
                    dataset.kind.name()
                ),
            ));
        }
        if !matches!(
            api,
            ApiKind::OpenaiChat | ApiKind::OllamaChat | ApiKind::Template
        ) {
            return Err((
                "target.api",
                format!(
                    "{:?} takes no message history; [conversation] needs openai-chat, ollama-chat or a template with %messages",
                    api.as_str()
                ),
            ));
        }
        if load.mode() == LoadMode::Trace {
            return Err((
                "load.trace",
                "a trace replays single requests at fixed times; remove [conversation] or the trace".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> LoadSection {
        toml::from_str(text).expect("load")
    }

    #[test]
    fn keys_parse_and_default() {
        let c: ConversationSection =
            toml::from_str("think_time = \"1.5s\"\nthink_time_distribution = \"exponential\"")
                .expect("parse");
        assert_eq!(c.think_time, Duration::from_millis(1500));
        assert_eq!(
            c.think_time_distribution,
            ThinkTimeDistribution::Exponential
        );
        assert_eq!(c.synthetic_turns(), DEFAULT_SYNTHETIC_TURNS);
        assert!(toml::from_str::<ConversationSection>("turn = 3").is_err());
    }

    #[test]
    fn single_prompt_datasets_completions_and_traces_are_refused() {
        let c = ConversationSection::default();
        let users = load("users = 2\nduration = \"1s\"");
        let lines = DatasetSection {
            kind: DatasetKind::Lines,
            ..DatasetSection::default()
        };
        let key = |r: Result<(), Problem>| r.err().map(|(k, _)| k);
        assert_eq!(
            key(c.validate(&lines, &users, ApiKind::OpenaiChat)),
            Some("dataset.kind")
        );
        let random = DatasetSection::default();
        assert_eq!(
            key(c.validate(&random, &users, ApiKind::OpenaiCompletions)),
            Some("target.api")
        );
        let trace = load("trace = \"t.jsonl\"");
        assert_eq!(
            key(c.validate(&random, &trace, ApiKind::OpenaiChat)),
            Some("load.trace")
        );
        let zero = ConversationSection {
            turns: Some(0),
            ..c.clone()
        };
        assert_eq!(
            key(zero.validate(&random, &users, ApiKind::OpenaiChat)),
            Some("conversation.turns")
        );
        assert_eq!(c.validate(&random, &users, ApiKind::OllamaChat), Ok(()));
    }
}
