//! The steps every kind shares, after its reader: count input tokens (the
//! plan's tokenizer, else words for the filters only), filter by length,
//! shuffle, limit, and set per-prompt output lengths.

use barrage_common::dataset::length_bounds;
use barrage_common::plan::DatasetSection;
use barrage_proto::agent::v1 as pb;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::{DatasetError, InputCounter, Item};

/// Prompts whose messages are handed to the tokenizer at once.
const COUNT_BATCH: usize = 1024;

/// Fills in every missing length: input tokens as the counter counts them
/// (with a tokenizer), else words.
fn measure(items: &mut [Item], tok: Option<&InputCounter>) -> Result<(), DatasetError> {
    let todo: Vec<usize> = (0..items.len())
        .filter(|&i| items[i].length.is_none())
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    let Some(tok) = tok else {
        for &i in &todo {
            let words = items[i]
                .messages
                .iter()
                .map(|m| m.content.split_whitespace().count())
                .sum();
            items[i].length = Some(words);
        }
        return Ok(());
    };
    // A batch at a time so a large file is not copied whole.
    for batch in todo.chunks(COUNT_BATCH) {
        let msgs: Vec<&[pb::ChatMessage]> = batch
            .iter()
            .map(|&i| items[i].messages.as_slice())
            .collect();
        let counts = tok.count_many(&msgs)?;
        for (&i, n) in batch.iter().zip(counts) {
            items[i].length = Some(n);
        }
    }
    Ok(())
}

/// The steps every kind shares: filter, shuffle, limit, count, output lengths.
pub(super) fn finish(
    d: &DatasetSection,
    mut items: Vec<Item>,
    tok: Option<&InputCounter>,
) -> Result<Vec<pb::Prompt>, DatasetError> {
    if d.min_prompt_tokens.is_some() || d.max_prompt_tokens.is_some() {
        measure(&mut items, tok)?;
        let loaded = items.len();
        let min = d.min_prompt_tokens.map_or(0, |v| v as usize);
        let max = d.max_prompt_tokens.map_or(usize::MAX, |v| v as usize);
        items.retain(|it| it.length.is_some_and(|n| (min..=max).contains(&n)));
        if items.is_empty() {
            let unit = if tok.is_some() { "tokens" } else { "words" };
            let show = |v: Option<u32>| v.map_or("none".to_string(), |v| v.to_string());
            return Err(DatasetError::Invalid {
                key: if d.min_prompt_tokens.is_some() {
                    "min_prompt_tokens"
                } else {
                    "max_prompt_tokens"
                },
                reason: format!(
                    "no prompt is left: none of the {loaded} loaded has between \
                     min_prompt_tokens = {} and max_prompt_tokens = {} {unit}",
                    show(d.min_prompt_tokens),
                    show(d.max_prompt_tokens)
                ),
            });
        }
    }
    if d.shuffle {
        items.shuffle(&mut StdRng::seed_from_u64(d.seed ^ 0x0053_4855_4646_4c45));
    }
    if let Some(n) = d.limit {
        items.truncate(n);
    }
    if tok.is_some() {
        measure(&mut items, tok)?;
    }
    let mut out_rng = StdRng::seed_from_u64(d.seed ^ 0x4f55_5450_5554);
    Ok(items
        .into_iter()
        .map(|it| pb::Prompt {
            messages: it.messages,
            max_tokens: d.output_tokens.map_or(0, |o| {
                let (low, high) = length_bounds(o, d.output_range_ratio);
                out_rng.random_range(low.max(1)..=high.max(1))
            }),
            input_tokens: match tok {
                Some(_) => it
                    .length
                    .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
                None => 0,
            },
            input_chat_template: tok.is_some_and(InputCounter::templated),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(words: &[usize]) -> Vec<Item> {
        words
            .iter()
            .enumerate()
            .map(|(i, &n)| Item::user(format!("p{i}{}", " w".repeat(n - 1))))
            .collect()
    }

    fn texts(ps: &[pb::Prompt]) -> Vec<String> {
        ps.iter().map(|p| p.messages[0].content.clone()).collect()
    }

    #[test]
    fn filters_count_words_without_a_tokenizer() {
        let d = DatasetSection {
            min_prompt_tokens: Some(3),
            max_prompt_tokens: Some(5),
            ..DatasetSection::default()
        };
        let ps = finish(&d, lines_of(&[1, 3, 5, 7, 4]), None).expect("filtered");
        assert_eq!(texts(&ps), ["p1 w w", "p2 w w w w", "p4 w w w"]);
        assert!(ps.iter().all(|p| p.input_tokens == 0 && p.max_tokens == 0));
    }

    #[test]
    fn a_filter_leaving_nothing_names_the_keys() {
        let d = DatasetSection {
            min_prompt_tokens: Some(50),
            ..DatasetSection::default()
        };
        let e = finish(&d, lines_of(&[1, 2]), None).expect_err("empty");
        let e = e.to_string();
        assert!(e.starts_with("dataset.min_prompt_tokens"), "{e}");
        assert!(e.contains("max_prompt_tokens = none"), "{e}");
    }

    #[test]
    fn shuffle_and_limit_follow_the_seed() {
        let d = DatasetSection {
            shuffle: true,
            limit: Some(5),
            seed: 7,
            ..DatasetSection::default()
        };
        let items = lines_of(&[1; 40]);
        let a = texts(&finish(&d, items.clone(), None).expect("a"));
        let b = texts(&finish(&d, items.clone(), None).expect("b"));
        let other = DatasetSection {
            seed: 8,
            ..d.clone()
        };
        let c = texts(&finish(&other, items, None).expect("c"));
        assert_eq!(a.len(), 5);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, ["p0", "p1", "p2", "p3", "p4"]);
    }

    #[test]
    fn output_lengths_stay_in_their_range() {
        let d = DatasetSection {
            output_tokens: Some(100),
            output_range_ratio: 0.2,
            ..DatasetSection::default()
        };
        let ps = finish(&d, lines_of(&[1; 200]), None).expect("ok");
        assert!(ps.iter().all(|p| (80..=120).contains(&p.max_tokens)));
        assert!(ps.iter().any(|p| p.max_tokens != ps[0].max_tokens));
        let fixed = DatasetSection {
            output_tokens: Some(64),
            ..DatasetSection::default()
        };
        let ps = finish(&fixed, lines_of(&[1; 5]), None).expect("ok");
        assert!(ps.iter().all(|p| p.max_tokens == 64));
    }
}
