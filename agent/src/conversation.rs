//! Multi-turn conversations replayed turn by turn. A conversation's prompt
//! holds its system message and its user turns; turn k is sent with the
//! history so far, the server's actual replies to turns 1..k-1 included,
//! after a think time. A failed turn ends (abandons) the conversation; the
//! end of the run lets the turn in flight finish (the drain) and starts no
//! new one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use barrage_common::chat_template::{ChatMessage, ChatTemplate};
use barrage_common::metrics::{CountSource, Layouts, MetricError};
use barrage_common::turns::{TurnSample, TurnSets};
use barrage_proto::agent::v1::{self as pb, ThinkTime};
use rand::Rng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Exp1};

use tokio_util::sync::CancellationToken;

use crate::client::{Parsers, PreparedPrompt};
use crate::engine::{Request, Workload, first_prompt};
use crate::measure::{InputCount, RequestMeasure};

/// Which turn of which conversation a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnRef {
    /// Per agent, 1-based in start order.
    pub conversation: u64,
    /// 1-based.
    pub turn: u32,
}

/// How a conversation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationEnd {
    Completed,
    /// A turn failed.
    Abandoned,
    /// The run ended, was stopped, or the request budget ran out.
    Cut,
}

/// Counts a turn's input tokens the way the server will (the history is
/// only known once the replies are).
pub struct TurnCounter {
    tok: Arc<tokenizers::Tokenizer>,
    way: Way,
}

enum Way {
    Chat(ChatTemplate),
    Raw,
    Joined,
}

#[derive(Debug, thiserror::Error)]
pub enum ConversationError {
    #[error("conversation counting: unknown way {0:?} (expected chat, raw or joined)")]
    Way(String),
    #[error("dataset.chat_template: {0}")]
    Template(String),
}

impl TurnCounter {
    pub fn new(
        tok: Arc<tokenizers::Tokenizer>,
        c: &pb::TurnCounting,
    ) -> Result<Self, ConversationError> {
        let way = match c.way.as_str() {
            "chat" => Way::Chat(
                ChatTemplate::new(
                    c.template.clone(),
                    c.bos_token.clone(),
                    c.eos_token.clone(),
                    "chat_template (from the controller)".into(),
                )
                .map_err(|e| ConversationError::Template(e.reason))?,
            ),
            "raw" => Way::Raw,
            "joined" => Way::Joined,
            other => return Err(ConversationError::Way(other.to_owned())),
        };
        Ok(Self { tok, way })
    }

    fn tokens(&self, text: &str) -> u64 {
        if text.is_empty() {
            return 0;
        }
        self.tok
            .encode_fast(text, false)
            .map_or(0, |e| e.len() as u64)
    }

    /// The history's input tokens; `None` when the template refuses it.
    pub fn count(&self, msgs: &[pb::ChatMessage]) -> Option<InputCount> {
        let (tokens, source) = match &self.way {
            Way::Chat(t) => {
                let view: Vec<ChatMessage<'_>> = msgs
                    .iter()
                    .map(|m| ChatMessage {
                        role: &m.role,
                        content: &m.content,
                    })
                    .collect();
                let text = t.render(&view).ok()?;
                (self.tokens(&text), CountSource::TokenizerChatTemplate)
            }
            Way::Raw => (
                msgs.iter().map(|m| self.tokens(&m.content)).sum(),
                CountSource::Tokenizer,
            ),
            Way::Joined => {
                let joined: Vec<&str> = msgs.iter().map(|m| m.content.as_str()).collect();
                (self.tokens(&joined.join("\n")), CountSource::Tokenizer)
            }
        };
        Some(InputCount { tokens, source })
    }
}

/// Longest think time drawn (the plan's mean is at most a day).
const MAX_THINK: Duration = Duration::from_secs(7 * 24 * 3600);

/// The think time between a reply and the next turn.
#[derive(Debug, Clone, Copy)]
pub struct Think {
    pub mean: Duration,
    pub distribution: ThinkTime,
}

impl Think {
    pub fn draw(&self, rng: &mut StdRng) -> Duration {
        let mean = self.mean.as_secs_f64();
        if mean <= 0.0 {
            return Duration::ZERO;
        }
        let s = match self.distribution {
            ThinkTime::Constant => mean,
            ThinkTime::Exponential => {
                let x: f64 = Exp1.sample(rng);
                mean * x
            }
            ThinkTime::Uniform => rng.random_range(0.0..=2.0 * mean),
        };
        // An exponential draw can be huge: cap it rather than overflow.
        Duration::try_from_secs_f64(s.max(0.0))
            .unwrap_or(Duration::MAX)
            .min(MAX_THINK)
    }
}

/// The conversations of one step on this agent, and their per-turn figures.
pub struct Conversations {
    /// Each one a conversation: system message, then user turns.
    pub prompts: Vec<pb::Prompt>,
    pub params: pb::RequestParams,
    pub think: Think,
    pub counter: Option<TurnCounter>,
    budget: Option<AtomicU64>,
    next: AtomicUsize,
    ids: AtomicU64,
    layouts: Layouts,
    /// Per-turn figures by the interval they landed in (exactly the
    /// interval their request's counters landed in).
    turns: Mutex<BTreeMap<u64, TurnSets>>,
}

impl Conversations {
    pub fn new(
        prompts: Vec<pb::Prompt>,
        params: pb::RequestParams,
        think: Think,
        max_conversations: Option<u64>,
        seed: u64,
        layouts: Layouts,
    ) -> Self {
        let start = first_prompt(seed, prompts.len());
        Self {
            prompts,
            params,
            think,
            counter: None,
            budget: max_conversations.map(AtomicU64::new),
            next: AtomicUsize::new(start),
            ids: AtomicU64::new(0),
            layouts,
            turns: Mutex::new(BTreeMap::new()),
        }
    }

    /// Takes one conversation from the budget: its id and prompt index;
    /// `None` when the budget is spent.
    pub fn claim(&self) -> Option<(u64, usize)> {
        if !crate::engine::take_one(self.budget.as_ref()) {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.prompts.len().max(1);
        Some((self.ids.fetch_add(1, Ordering::Relaxed) + 1, i))
    }

    pub fn budget_spent(&self) -> bool {
        self.budget
            .as_ref()
            .is_some_and(|b| b.load(Ordering::Acquire) == 0)
    }

    /// Records a finished turn in `interval` (read under its shard's lock).
    pub fn record(&self, interval: u64, s: TurnSample) {
        let mut turns = self.turns.lock().unwrap_or_else(PoisonError::into_inner);
        let set = turns
            .entry(interval)
            .or_insert_with(|| TurnSets::new(self.layouts));
        if let Err(e) = set.record(s) {
            tracing::warn!("per-turn figures: {e}");
        }
    }

    /// Takes the per-turn figures of the intervals before `next` (called
    /// after the recorder's cut moved every shard to `next`).
    pub fn cut(&self, next: u64) -> Result<TurnSets, MetricError> {
        let mut turns = self.turns.lock().unwrap_or_else(PoisonError::into_inner);
        let later = turns.split_off(&next);
        let done = std::mem::replace(&mut *turns, later);
        let mut out = TurnSets::new(self.layouts);
        for set in done.values() {
            out.add(set)?;
        }
        Ok(out)
    }
}

/// Where a conversation runs: its agent slot, user, and the tokens that
/// end it (`stop`: no new turn; `cut`: the turn in flight is cut).
pub struct Seat<'a> {
    pub slot: usize,
    pub user: u64,
    pub stop: &'a CancellationToken,
    pub cut: &'a CancellationToken,
}

/// Runs one conversation to its end: every turn, or until a turn fails,
/// the run stops or the request budget is spent. Counts how it ended.
pub async fn run_one(
    work: &Workload,
    seat: Seat<'_>,
    rng: &mut StdRng,
    m: &mut RequestMeasure,
    p: &mut Parsers,
) -> ConversationEnd {
    let Some(convs) = &work.conversations else {
        return ConversationEnd::Cut;
    };
    if work.requests_spent() {
        return ConversationEnd::Cut;
    }
    let Some((id, index)) = convs.claim() else {
        return ConversationEnd::Cut;
    };
    work.recorder
        .with_shard(seat.slot, |s| s.counters.conversations.started += 1);
    let end = turns(work, convs, (id, index), &seat, rng, m, p).await;
    work.recorder.with_shard(seat.slot, |s| {
        let c = &mut s.counters.conversations;
        match end {
            ConversationEnd::Completed => c.completed += 1,
            ConversationEnd::Abandoned => c.abandoned += 1,
            ConversationEnd::Cut => c.cut += 1,
        }
    });
    end
}

async fn turns(
    work: &Workload,
    convs: &Conversations,
    (id, index): (u64, usize),
    seat: &Seat<'_>,
    rng: &mut StdRng,
    m: &mut RequestMeasure,
    p: &mut Parsers,
) -> ConversationEnd {
    let convo = &convs.prompts[index];
    let (mut history, user_msgs) = user_turns(convo);
    for (k, said) in user_msgs.into_iter().enumerate() {
        if k > 0 {
            let pause = convs.think.draw(rng);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = seat.stop.cancelled() => return ConversationEnd::Cut,
            }
        }
        if seat.stop.is_cancelled() || !work.claim() {
            return ConversationEnd::Cut;
        }
        history.push(said.clone());
        let prepared = match prepare_turn(work, convs, convo, &history) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("conversation {id}: turn {} cannot be built: {e}", k + 1);
                return ConversationEnd::Abandoned;
            }
        };
        let req = Request {
            index,
            prompt: &prepared,
            turn: Some(TurnRef {
                conversation: id,
                turn: u32::try_from(k + 1).unwrap_or(u32::MAX),
            }),
            text: Some(&said.content),
        };
        match work
            .one_request(seat.slot, seat.user, req, m, p, seat.cut)
            .await
        {
            None => return ConversationEnd::Cut,
            Some(false) => return ConversationEnd::Abandoned,
            Some(true) => history.push(pb::ChatMessage {
                role: "assistant".into(),
                content: m.response_text(),
            }),
        }
    }
    ConversationEnd::Completed
}

/// The request body of a turn: the history so far, counted with the
/// plan's tokenizer when there is one.
fn prepare_turn(
    work: &Workload,
    convs: &Conversations,
    convo: &pb::Prompt,
    history: &[pb::ChatMessage],
) -> Result<PreparedPrompt, crate::client::ClientError> {
    let counted = convs.counter.as_ref().and_then(|c| c.count(history));
    let prompt = pb::Prompt {
        messages: history.to_vec(),
        max_tokens: convo.max_tokens,
        input_tokens: counted.map_or(0, |c| u32::try_from(c.tokens).unwrap_or(u32::MAX)),
        input_chat_template: counted
            .is_some_and(|c| c.source == CountSource::TokenizerChatTemplate),
    };
    work.client.prepare(&prompt, &convs.params)
}

/// The history up to and including user turn `k` is built by the caller;
/// this is the messages' split into the leading system part and the turns.
pub fn user_turns(prompt: &pb::Prompt) -> (Vec<pb::ChatMessage>, Vec<&pb::ChatMessage>) {
    let mut lead = Vec::new();
    let mut turns = Vec::new();
    for m in &prompt.messages {
        if m.role == "user" {
            turns.push(m);
        } else if turns.is_empty() {
            lead.push(m.clone());
        }
    }
    (lead, turns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn think_times_have_their_mean_and_shape() {
        let mut rng = StdRng::seed_from_u64(7);
        let mean = Duration::from_millis(200);
        for (d, max_cv) in [
            (ThinkTime::Constant, 0.0),
            (ThinkTime::Exponential, 1.1),
            (ThinkTime::Uniform, 0.7),
        ] {
            let t = Think {
                mean,
                distribution: d,
            };
            let xs: Vec<f64> = (0..4000).map(|_| t.draw(&mut rng).as_secs_f64()).collect();
            let m = xs.iter().sum::<f64>() / xs.len() as f64;
            let sd = (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64).sqrt();
            assert!((m - 0.2).abs() < 0.02, "{d:?} mean {m}");
            assert!(sd / m <= max_cv + 1e-9, "{d:?} cv {}", sd / m);
            if d == ThinkTime::Uniform {
                assert!(xs.iter().all(|x| *x <= 0.4 + 1e-9));
            }
        }
    }

    #[test]
    fn the_budget_counts_conversations_and_ids_go_up() {
        let layouts = Layouts {
            latency: barrage_common::metrics::Layout::LATENCY_US,
            tokens: barrage_common::metrics::Layout::TOKENS,
        };
        let c = Conversations::new(
            vec![pb::Prompt::default(); 3],
            pb::RequestParams::default(),
            Think {
                mean: Duration::ZERO,
                distribution: ThinkTime::Constant,
            },
            Some(2),
            4,
            layouts,
        );
        assert_eq!(c.claim(), Some((1, 1)));
        assert_eq!(c.claim(), Some((2, 2)));
        assert_eq!(c.claim(), None);
        assert!(c.budget_spent());
    }

    #[test]
    fn turns_are_cut_by_interval() {
        let layouts = Layouts {
            latency: barrage_common::metrics::Layout::LATENCY_US,
            tokens: barrage_common::metrics::Layout::TOKENS,
        };
        let c = Conversations::new(
            vec![],
            pb::RequestParams::default(),
            Think {
                mean: Duration::ZERO,
                distribution: ThinkTime::Constant,
            },
            None,
            0,
            layouts,
        );
        let s = |turn| TurnSample {
            turn,
            ok: true,
            ttft_us: Some(5),
            e2e_us: Some(9),
            input_tokens: 3,
        };
        c.record(0, s(1));
        c.record(1, s(2));
        let first = c.cut(1).expect("cut");
        assert_eq!(first.iter().map(|(k, _)| k).collect::<Vec<_>>(), vec![1]);
        let second = c.cut(2).expect("cut");
        assert_eq!(second.iter().map(|(k, _)| k).collect::<Vec<_>>(), vec![2]);
        assert!(c.cut(3).expect("cut").is_empty());
    }
}
