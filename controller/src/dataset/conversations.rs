//! Conversations for turn-by-turn replay (`[conversation]`): each prompt
//! sent to the agents is one conversation, its messages the system message
//! (if any) and the user turns. Recorded assistant turns are dropped: the
//! agent puts the server's actual replies in their place.

use std::path::Path;

use barrage_common::conversation::ConversationSection;
use barrage_common::dataset::{DatasetKind, DatasetSection};
use barrage_common::plan::ApiKind;
use barrage_proto::agent::v1 as pb;

use super::counting::{InputCounter, Way};
use super::{DatasetError, Item, Loaded, random, steps};

/// Loads the conversations of `d` for turn-by-turn replay. Input tokens are
/// left to the agents (a turn's history holds replies not known yet), so
/// `counted` only says how the agents will count.
pub fn load(
    d: &DatasetSection,
    conv: &ConversationSection,
    plan_dir: Option<&Path>,
    api: ApiKind,
) -> Result<Loaded, DatasetError> {
    d.validate()
        .map_err(|(key, reason)| DatasetError::Invalid { key, reason })?;
    let counter = InputCounter::for_plan(d, plan_dir, Some(api))?;
    let items = match d.kind {
        DatasetKind::Random => synthetic(d, conv, counter.as_ref())?,
        kind => {
            let (path, items) = super::file_items(d, kind, plan_dir)?;
            let items: Vec<Item> = items
                .into_iter()
                .filter_map(|it| user_turns(it, conv.turns))
                .collect();
            if items.is_empty() {
                return Err(DatasetError::Read {
                    key: "path",
                    path,
                    reason: "holds no conversation with a user turn".into(),
                });
            }
            items
        }
    };
    let mut prompts = steps::finish(d, items, counter.as_ref())?;
    for p in &mut prompts {
        // Counted per turn by the agent, on the history as sent.
        p.input_tokens = 0;
        p.input_chat_template = false;
    }
    Ok(Loaded {
        prompts,
        counted: counter.as_ref().map(|c| super::CountInfo::of(c, Some(api))),
    })
}

/// The system message and the first `max_turns` user turns, in order; none
/// when the conversation has no user turn.
fn user_turns(item: Item, max_turns: Option<u32>) -> Option<Item> {
    let mut users = 0u32;
    let messages: Vec<pb::ChatMessage> = item
        .messages
        .into_iter()
        .filter(|m| match m.role.as_str() {
            "system" => users == 0,
            "user" if max_turns.is_none_or(|n| users < n) => {
                users += 1;
                true
            }
            _ => false,
        })
        .collect();
    (users > 0).then(|| Item::new(messages))
}

/// `prompts` synthetic conversations of `turns` user turns, each turn of
/// `input_tokens` (its raw text, exact with the tokenizer).
fn synthetic(
    d: &DatasetSection,
    conv: &ConversationSection,
    counter: Option<&InputCounter>,
) -> Result<Vec<Item>, DatasetError> {
    if d.prefix_tokens > 0 {
        return Err(DatasetError::Invalid {
            key: "prefix_tokens",
            reason: "not used by synthetic conversations: later turns already share \
                     their conversation's history as a prefix"
                .into(),
        });
    }
    let turns = conv.synthetic_turns() as usize;
    let all = DatasetSection {
        prompts: d.prompts.saturating_mul(turns as u32),
        ..d.clone()
    };
    let singles = match counter {
        Some(c) => random::turn_items(&all, c.tokenizer())?,
        None => random::word_items(&all),
    };
    Ok(singles
        .chunks(turns)
        .map(|group| Item::new(group.iter().flat_map(|it| it.messages.clone()).collect()))
        .collect())
}

/// How an agent counts a turn's input tokens with the plan's tokenizer.
pub fn turn_counting(counter: &InputCounter) -> pb::TurnCounting {
    match counter.way() {
        Way::Chat(t) => {
            let (source, bos, eos) = t.parts();
            pb::TurnCounting {
                way: "chat".into(),
                template: source.to_owned(),
                bos_token: bos.to_owned(),
                eos_token: eos.to_owned(),
            }
        }
        Way::Raw(_) => pb::TurnCounting {
            way: "raw".into(),
            ..Default::default()
        },
        Way::Joined => pb::TurnCounting {
            way: "joined".into(),
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(roles: &[&str]) -> Item {
        Item::new(
            roles
                .iter()
                .enumerate()
                .map(|(i, r)| super::super::message(r, format!("m{i}")))
                .collect(),
        )
    }

    #[test]
    fn recorded_replies_are_dropped_and_turns_capped() {
        let it = item(&["system", "user", "assistant", "user", "assistant", "user"]);
        let got = user_turns(it.clone(), None).expect("turns");
        let roles: Vec<_> = got.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "user", "user"]);
        let two = user_turns(it, Some(2)).expect("turns");
        let texts: Vec<_> = two.messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(texts, ["m0", "m1", "m3"]);
        assert!(user_turns(item(&["system", "assistant"]), None).is_none());
    }

    #[test]
    fn synthetic_conversations_have_their_turns() {
        let d = DatasetSection {
            input_tokens: 7,
            prompts: 5,
            ..DatasetSection::default()
        };
        let conv = ConversationSection {
            turns: Some(3),
            ..ConversationSection::default()
        };
        let items = synthetic(&d, &conv, None).expect("synthetic");
        assert_eq!(items.len(), 5);
        for it in &items {
            assert_eq!(it.messages.len(), 3);
            assert!(
                it.messages
                    .iter()
                    .all(|m| m.role == "user" && m.content.split_whitespace().count() == 7)
            );
        }
        let prefixed = DatasetSection {
            prefix_tokens: 4,
            ..d
        };
        assert!(matches!(
            synthetic(&prefixed, &conv, None),
            Err(DatasetError::Invalid {
                key: "prefix_tokens",
                ..
            })
        ));
    }
}
