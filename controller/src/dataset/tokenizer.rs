//! The plan's tokenizer: a Hugging Face `tokenizer.json` loaded with the
//! `tokenizers` crate, used to count input tokens and to build random prompts
//! of an exact length. Counts are of the text alone (no special tokens, no
//! chat template).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use tokenizers::Tokenizer;

use super::DatasetError;

/// Vocabulary entries tried as building blocks of random prompts.
const PROBE: usize = 20_000;
/// Building blocks kept.
const POOL: usize = 4_096;

/// A loaded tokenizer and where it came from.
pub struct PromptTokenizer {
    inner: Tokenizer,
    path: PathBuf,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl PromptTokenizer {
    /// Loads a `tokenizer.json`; errors name the file.
    pub fn from_file(path: &Path) -> Result<Self, DatasetError> {
        let inner = Tokenizer::from_file(path).map_err(|e| DatasetError::Tokenizer {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            inner,
            path: path.to_owned(),
        })
    }

    /// The file's bytes for the agents, loaded here first: a missing or bad
    /// file is a bad plan (exit 2) before any agent is asked to prepare.
    pub fn checked_bytes(path: &Path) -> Result<Vec<u8>, DatasetError> {
        let fail = |reason: String| DatasetError::Tokenizer {
            path: path.to_owned(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        Tokenizer::from_bytes(&bytes).map_err(|e| fail(format!("not a tokenizer.json: {e}")))?;
        Ok(bytes)
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fail(&self, reason: impl std::fmt::Display) -> DatasetError {
        DatasetError::Tokenizer {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    /// Token ids of `text`, without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DatasetError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| self.fail(format!("encoding failed: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Tokens in `text` (no special tokens added).
    pub fn count(&self, text: &str) -> Result<usize, DatasetError> {
        if text.is_empty() {
            return Ok(0);
        }
        Ok(self.encode(text)?.len())
    }

    /// Token counts of many texts at once (in parallel).
    pub fn count_many(&self, texts: Vec<String>) -> Result<Vec<usize>, DatasetError> {
        let encs = self
            .inner
            .encode_batch(texts, false)
            .map_err(|e| self.fail(format!("encoding failed: {e}")))?;
        Ok(encs.iter().map(|e| e.get_ids().len()).collect())
    }

    /// The text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, DatasetError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| self.fail(format!("decoding failed: {e}")))
    }

    /// Building blocks for random prompts: ordinary (not special, not added)
    /// vocabulary entries that decode to a plain word and re-encode to
    /// themselves, alone and twice in a row. Chosen from a seeded sample of
    /// the vocabulary.
    pub fn word_pool(&self, seed: u64) -> Result<Vec<u32>, DatasetError> {
        let special: HashSet<u32> = self
            .inner
            .get_added_tokens_decoder()
            .keys()
            .copied()
            .collect();
        let mut ids: Vec<u32> = self
            .inner
            .get_vocab(false)
            .into_values()
            .filter(|id| !special.contains(id))
            .collect();
        ids.sort_unstable();
        ids.shuffle(&mut StdRng::seed_from_u64(seed ^ 0x746f_6b65_6e73));
        let mut pool = Vec::new();
        for &id in ids.iter().take(PROBE) {
            if self.is_plain_word(id)? {
                pool.push(id);
                if pool.len() == POOL {
                    break;
                }
            }
        }
        if pool.len() < 2 {
            return Err(
                self.fail("its vocabulary has too few plain-word tokens to build random prompts")
            );
        }
        Ok(pool)
    }

    fn is_plain_word(&self, id: u32) -> Result<bool, DatasetError> {
        let one = self.decode(&[id])?;
        let word = one.trim();
        if word.is_empty() || !word.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Ok(false);
        }
        if self.encode(&one)? != [id] {
            return Ok(false);
        }
        Ok(self.count(&self.decode(&[id, id])?)? == 2)
    }
}
