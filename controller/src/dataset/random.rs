//! Synthetic prompts (`kind = "random"`). With the plan's tokenizer each
//! prompt has exactly its target input token count as the server counts it
//! (for a chat API with a chat template: the rendered template, role markers
//! and all), checked by re-encoding; without one, exactly its target word
//! count (what llm-sim counts by default).
//! Every prompt is the shared prefix (`prefix_tokens`), then a part that is
//! random from its first token on, so a prefix cache cannot serve the prompts
//! from one entry; prompts are distinct.

use std::collections::HashSet;

use barrage_common::dataset::{DatasetSection, length_bounds};
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::{DatasetError, InputCounter, Item, PromptTokenizer};

/// Tries at fitting one prompt to its exact token count.
const FIT_TRIES: usize = 200;
/// Tries at drawing a prompt unlike every earlier one.
const DISTINCT_TRIES: usize = 16;

const VOCAB: &[&str] = &[
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
    "uniform", "victor", "whiskey", "xray", "yankee", "zulu",
];

/// Per-prompt lengths: `input_tokens`, or uniform in its range.
fn lengths(d: &DatasetSection) -> Vec<usize> {
    let (low, high) = length_bounds(d.input_tokens, d.range_ratio);
    let mut rng = StdRng::seed_from_u64(d.seed ^ 0x4c45_4e47_5448);
    (0..d.prompts)
        .map(|_| {
            if low == high {
                low as usize
            } else {
                rng.random_range(low.max(1)..=high) as usize
            }
        })
        .collect()
}

/// Word prompts: the shared prefix words, then `q<i>` (unique), then random
/// words, `input_tokens` words in all.
pub(super) fn word_items(d: &DatasetSection) -> Vec<Item> {
    let mut rng = StdRng::seed_from_u64(d.seed);
    let mut prefix = String::new();
    for _ in 0..d.prefix_tokens {
        prefix.push_str(VOCAB[rng.random_range(0..VOCAB.len())]);
        prefix.push(' ');
    }
    let fixed = d.prefix_tokens as usize;
    lengths(d)
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            let mut text = format!("{prefix}q{i}");
            for _ in fixed + 1..n {
                text.push(' ');
                text.push_str(VOCAB[rng.random_range(0..VOCAB.len())]);
            }
            Item {
                length: Some(n.max(fixed + 1)),
                ..Item::user(text)
            }
        })
        .collect()
}

/// `prefix` then `body`, with a space between unless one is there already.
fn join(prefix: &str, body: &str) -> String {
    if prefix.is_empty() {
        return body.trim_start().to_owned();
    }
    let sep = !(prefix.ends_with(char::is_whitespace) || body.starts_with(char::is_whitespace));
    format!("{prefix}{}{body}", if sep { " " } else { "" })
}

/// How a candidate text is counted: raw, or as the prompt a server gets.
type Count<'a> = &'a (dyn Fn(&str) -> Result<usize, DatasetError> + Sync);

/// A text starting with `prefix` whose re-encoded count is exactly `target`,
/// the rest drawn from `pool`: add or remove tokens until the count is
/// right, redrawing the last one when the count goes round in circles.
fn fit(
    tok: &PromptTokenizer,
    count: Count<'_>,
    prefix: &str,
    target: usize,
    pool: &[u32],
    rng: &mut StdRng,
) -> Result<String, DatasetError> {
    let draw = |rng: &mut StdRng| pool[rng.random_range(0..pool.len())];
    let base = count(prefix)?;
    let mut ids: Vec<u32> = (0..target.saturating_sub(base).max(1))
        .map(|_| draw(rng))
        .collect();
    let mut seen = HashSet::new();
    for _ in 0..FIT_TRIES {
        let text = join(prefix, &tok.decode(&ids)?);
        let count = count(&text)?;
        if count == target {
            return Ok(text);
        }
        if !seen.insert((ids.len(), count)) || (count > target && ids.len() == 1) {
            // Been here before (or cannot shrink): change the last token.
            if let Some(last) = ids.last_mut() {
                *last = draw(rng);
            }
            seen.clear();
            continue;
        }
        if count > target {
            let keep = ids.len() - (count - target).min(ids.len() - 1);
            ids.truncate(keep);
        } else {
            ids.extend((0..target - count).map(|_| draw(rng)));
        }
    }
    Err(DatasetError::Tokenizer {
        path: tok.path().to_owned(),
        reason: format!(
            "could not build a random prompt of exactly {target} tokens in {FIT_TRIES} tries \
             (the shared prefix and any chat template take {base})"
        ),
    })
}

/// The generator of prompt `i` (and of its `attempt`-th redraw): each prompt
/// its own, so prompts do not depend on how many threads built them.
fn prompt_rng(seed: u64, i: usize, attempt: usize) -> StdRng {
    StdRng::seed_from_u64(
        seed.wrapping_add((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .wrapping_add((attempt as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)),
    )
}

/// Fits prompts of `lens` on every core.
fn fit_all(
    tok: &PromptTokenizer,
    count: Count<'_>,
    prefix: &str,
    lens: &[usize],
    pool: &[u32],
    seed: u64,
) -> Result<Vec<String>, DatasetError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = lens.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = lens
            .chunks(per)
            .enumerate()
            .map(|(c, chunk)| {
                s.spawn(move || {
                    (chunk.iter().enumerate())
                        .map(|(j, &n)| {
                            let mut rng = prompt_rng(seed, c * per + j, 0);
                            fit(tok, count, prefix, n, pool, &mut rng)
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(lens.len());
        for h in handles {
            out.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?);
        }
        Ok(out)
    })
}

/// Refuses lengths the chat template alone reaches: a prompt needs at least
/// one token of its own.
fn check_room(
    counter: &InputCounter,
    key: &'static str,
    lens: &[usize],
) -> Result<(), DatasetError> {
    let Some(origin) = counter.template_origin() else {
        return Ok(());
    };
    let empty = counter.count_user_text("")?;
    match lens.iter().min() {
        Some(&n) if n <= empty => Err(DatasetError::Invalid {
            key,
            reason: format!(
                "a prompt of {n} input tokens leaves no room for text: the chat template of {} \
                 makes {empty} tokens around an empty user message",
                origin.display()
            ),
        }),
        _ => Ok(()),
    }
}

/// Texts of exactly `lens[i]` input tokens each as one user message,
/// random from their first token (trace replay: each arrival's length).
pub(super) fn exact_texts(
    counter: &InputCounter,
    lens: &[usize],
    seed: u64,
) -> Result<Vec<String>, DatasetError> {
    check_room(counter, "input_tokens", lens)?;
    let tok = counter.tokenizer();
    let pool = tok.word_pool(seed)?;
    let count = |t: &str| counter.count_user_text(t);
    fit_all(tok, &count, "", lens, &pool, seed)
}

/// Token prompts of exact input lengths as the server counts them.
pub(super) fn tokens(
    d: &DatasetSection,
    counter: &InputCounter,
) -> Result<Vec<Item>, DatasetError> {
    let tok = counter.tokenizer();
    let lens = lengths(d);
    check_room(counter, "input_tokens", &lens)?;
    let pool = tok.word_pool(d.seed)?;
    // The shared prefix is p tokens of text; the whole prompt is counted as sent.
    let raw = |t: &str| tok.count(t);
    let prefix = match d.prefix_tokens {
        0 => String::new(),
        p => fit(
            tok,
            &raw,
            "",
            p as usize,
            &pool,
            &mut StdRng::seed_from_u64(d.seed),
        )?,
    };
    let count = |t: &str| counter.count_user_text(t);
    let mut texts = fit_all(tok, &count, &prefix, &lens, &pool, d.seed)?;
    // Redraw any prompt equal to an earlier one.
    let mut seen = HashSet::new();
    for (i, (text, &n)) in texts.iter_mut().zip(&lens).enumerate() {
        let mut attempt = 0;
        while !seen.insert(text.clone()) {
            attempt += 1;
            if attempt == DISTINCT_TRIES {
                return Err(DatasetError::Invalid {
                    key: "prompts",
                    reason: format!(
                        "could not draw {} distinct prompts of {n} tokens after the shared \
                         prefix of {} (make input_tokens longer or prompts fewer)",
                        d.prompts, d.prefix_tokens
                    ),
                });
            }
            let mut rng = prompt_rng(d.seed, i, attempt);
            *text = fit(tok, &count, &prefix, n, &pool, &mut rng)?;
        }
    }
    Ok(sized_items(texts, lens))
}

/// User items of the given texts, each with its drawn length.
fn sized_items(texts: Vec<String>, lens: Vec<usize>) -> Vec<Item> {
    texts
        .into_iter()
        .zip(lens)
        .map(|(text, n)| Item {
            length: Some(n),
            ..Item::user(text)
        })
        .collect()
}

/// Multi-turn: user turns of exactly their drawn length as raw text (each
/// turn's own tokens; the history around it is counted by the agent).
pub(super) fn turn_items(
    d: &DatasetSection,
    tok: &PromptTokenizer,
) -> Result<Vec<Item>, DatasetError> {
    let lens = lengths(d);
    let pool = tok.word_pool(d.seed)?;
    let raw = |t: &str| tok.count(t);
    let texts = fit_all(tok, &raw, "", &lens, &pool, d.seed)?;
    Ok(sized_items(texts, lens))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(n: u32, count: u32) -> DatasetSection {
        DatasetSection {
            input_tokens: n,
            prompts: count,
            seed: 1,
            ..DatasetSection::default()
        }
    }

    fn words(item: &Item) -> usize {
        item.messages[0].content.split_whitespace().count()
    }

    #[test]
    fn word_prompts_have_exact_counts_and_differ() {
        let items = word_items(&section(50, 10));
        assert_eq!(items.len(), 10);
        assert!(items.iter().all(|i| words(i) == 50 && i.length == Some(50)));
        assert_ne!(items[0].messages[0].content, items[1].messages[0].content);
    }

    #[test]
    fn word_prompts_share_the_prefix_and_vary_within_the_range() {
        let d = DatasetSection {
            range_ratio: 0.5,
            prefix_tokens: 8,
            ..section(40, 100)
        };
        let items = word_items(&d);
        let prefix: Vec<&str> = items[0].messages[0]
            .content
            .split_whitespace()
            .take(8)
            .collect();
        for (i, it) in items.iter().enumerate() {
            let ws: Vec<&str> = it.messages[0].content.split_whitespace().collect();
            assert!((20..=60).contains(&ws.len()), "{}", ws.len());
            assert_eq!(Some(ws.len()), it.length);
            assert_eq!(ws[..8], prefix[..]);
            assert_eq!(ws[8], format!("q{i}"));
        }
        let distinct: HashSet<usize> = items.iter().map(words).collect();
        assert!(distinct.len() > 10);
    }

    #[test]
    fn join_keeps_the_prefix_intact() {
        assert_eq!(join("", " a b"), "a b");
        assert_eq!(join("p q", "a"), "p q a");
        assert_eq!(join("p q", " a"), "p q a");
    }
}
