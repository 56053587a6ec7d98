//! The simulated server prefix cache, after vLLM's automatic prefix caching.
//!
//! A prompt is a sequence of units (token ids, or words without a
//! tokenizer), cut into full blocks of `block_tokens` units; a trailing
//! partial block is never cached. Each block is named by a hash chained over
//! its units and the previous block's hash, so it matches only after the same
//! whole prefix. A request's cached part is the longest run of its leading
//! blocks present in the cache, within its first `len − 1` units (vLLM always
//! computes the last prompt token, to get logits from it). Admission inserts
//! the prompt's blocks; completion inserts the blocks of prompt + output, so
//! the next turn of a conversation finds the reply too. The cache is one LRU
//! of `capacity_tokens / block_tokens` blocks shared by every request; a
//! sequence's blocks are touched last-first, so its tail is evicted before its
//! head, as vLLM frees a request's blocks in reverse order. Blocks in use by a
//! running request are not pinned (vLLM's are): the simulator has no KV
//! memory to run out of.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Mutex, PoisonError};

use barrage_common::simulator::PrefixCache as Config;

/// The parent hash of a sequence's first block.
const ROOT: u64 = 0x6c6c_6d2d_7369_6d00;

/// A word of text as a cache unit (without a tokenizer).
pub(crate) fn word_unit(word: &str) -> u64 {
    let mut h = DefaultHasher::new();
    (0u8, word).hash(&mut h);
    h.finish()
}

/// A token id as a cache unit (a tokenizer's, or a prompt of token ids).
pub(crate) fn id_unit(id: u64) -> u64 {
    let mut h = DefaultHasher::new();
    (1u8, id).hash(&mut h);
    h.finish()
}

fn chain(parent: u64, units: &[u64]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    units.hash(&mut h);
    h.finish()
}

/// A sequence's full blocks (by chained hash) and the units after them.
#[derive(Debug, Clone)]
pub(crate) struct Blocks {
    size: usize,
    hashes: Vec<u64>,
    tail: Vec<u64>,
}

impl Blocks {
    pub fn new(size: usize) -> Self {
        Self {
            size: size.max(1),
            hashes: Vec::new(),
            // Not sized to the block: block_tokens may be large.
            tail: Vec::new(),
        }
    }

    /// Appends one unit; closes a block when it is full.
    pub fn push(&mut self, unit: u64) {
        self.tail.push(unit);
        if self.tail.len() == self.size {
            let parent = self.hashes.last().copied().unwrap_or(ROOT);
            self.hashes.push(chain(parent, &self.tail));
            self.tail.clear();
        }
    }

    /// Units pushed so far.
    pub fn units(&self) -> usize {
        self.hashes.len() * self.size + self.tail.len()
    }

    /// Units per block.
    pub fn size(&self) -> usize {
        self.size
    }
}

/// What admitting a prompt found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admitted {
    /// Leading blocks found in the cache.
    pub hit_blocks: usize,
    /// Blocks evicted to make room.
    pub evicted: u64,
}

/// Block hashes in least-recently-used order.
#[derive(Debug, Default)]
struct Lru {
    stamp_of: HashMap<u64, u64>,
    by_stamp: BTreeMap<u64, u64>,
    clock: u64,
}

impl Lru {
    fn touch(&mut self, hash: u64) {
        self.clock += 1;
        if let Some(old) = self.stamp_of.insert(hash, self.clock) {
            self.by_stamp.remove(&old);
        }
        self.by_stamp.insert(self.clock, hash);
    }

    /// Evicts the least recently used blocks beyond `capacity`; how many.
    fn trim(&mut self, capacity: usize) -> u64 {
        let mut evicted = 0;
        while self.stamp_of.len() > capacity {
            let Some((_, hash)) = self.by_stamp.pop_first() else {
                break;
            };
            self.stamp_of.remove(&hash);
            evicted += 1;
        }
        evicted
    }
}

/// The cache shared by every request of one server.
#[derive(Debug)]
pub(crate) struct PrefixCache {
    block: usize,
    capacity: usize,
    lru: Mutex<Lru>,
}

impl PrefixCache {
    /// The configured cache; None when disabled.
    pub fn new(cfg: &Config) -> Option<Self> {
        let block = usize::try_from(cfg.block_tokens).ok()?.max(1);
        let blocks = cfg.capacity_tokens / u64::from(cfg.block_tokens.max(1));
        cfg.enabled.then(|| Self {
            block,
            capacity: usize::try_from(blocks).unwrap_or(usize::MAX).max(1),
            lru: Mutex::new(Lru::default()),
        })
    }

    /// Units per block.
    pub fn block(&self) -> usize {
        self.block
    }

    /// Looks a prompt up (its longest run of cached leading blocks within its
    /// first `len − 1` units), then inserts all its full blocks.
    pub fn admit(&self, prompt: &Blocks) -> Admitted {
        let usable = prompt.units().saturating_sub(1) / prompt.size;
        let mut lru = self.lru.lock().unwrap_or_else(PoisonError::into_inner);
        let hit_blocks = prompt.hashes[..usable.min(prompt.hashes.len())]
            .iter()
            .take_while(|h| lru.stamp_of.contains_key(h))
            .count();
        let evicted = Self::store(&mut lru, &prompt.hashes, self.capacity);
        Admitted {
            hit_blocks,
            evicted,
        }
    }

    /// Inserts a sequence's full blocks (a completed prompt + output); how
    /// many blocks that evicted.
    pub fn insert(&self, seq: &Blocks) -> u64 {
        let mut lru = self.lru.lock().unwrap_or_else(PoisonError::into_inner);
        Self::store(&mut lru, &seq.hashes, self.capacity)
    }

    /// Touches the blocks last-first, so the head stays longest.
    fn store(lru: &mut Lru, hashes: &[u64], capacity: usize) -> u64 {
        hashes.iter().rev().for_each(|&h| lru.touch(h));
        lru.trim(capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(block_tokens: u32, capacity_tokens: u64) -> PrefixCache {
        let cfg = Config {
            enabled: true,
            block_tokens,
            capacity_tokens,
        };
        PrefixCache::new(&cfg).expect("enabled")
    }

    fn seq(size: usize, units: impl IntoIterator<Item = u64>) -> Blocks {
        let mut b = Blocks::new(size);
        units.into_iter().for_each(|u| b.push(id_unit(u)));
        b
    }

    #[test]
    fn blocks_chain_over_the_whole_prefix() {
        let a = seq(4, 0..10);
        assert_eq!((a.hashes.len(), a.tail.len(), a.units()), (2, 2, 10));
        // The same second block after a different first block is another block.
        let b = seq(4, [9, 9, 9, 9, 4, 5, 6, 7]);
        assert_ne!(a.hashes[0], b.hashes[0]);
        assert_ne!(a.hashes[1], b.hashes[1]);
        assert_eq!(seq(4, 0..8).hashes, a.hashes);
        assert!(PrefixCache::new(&Config::default()).is_none(), "disabled");
    }

    #[test]
    fn hits_the_longest_cached_run_of_full_leading_blocks() {
        let c = cache(4, 1024);
        assert_eq!(c.admit(&seq(4, 0..10)).hit_blocks, 0);
        // Same first 9 units: both full blocks hit, the partial one cannot.
        assert_eq!(c.admit(&seq(4, (0..9).chain([70, 71]))).hit_blocks, 2);
        // Diverging inside block 1: only block 0.
        assert_eq!(c.admit(&seq(4, [0, 1, 2, 3, 4, 99, 6, 7, 8])).hit_blocks, 1);
        // A prompt of exactly two cached blocks recomputes its last token.
        assert_eq!(c.admit(&seq(4, 0..8)).hit_blocks, 1);
        // Nothing in common.
        assert_eq!(c.admit(&seq(4, 100..120)).hit_blocks, 0);
    }

    #[test]
    fn evicts_least_recently_used_tails_first() {
        let c = cache(4, 12); // 3 blocks
        c.admit(&seq(4, 0..9)); // blocks A0 A1
        let e = c.admit(&seq(4, 100..109)); // B0 B1: evicts A1, the tail
        assert_eq!(e.evicted, 1);
        assert_eq!(c.admit(&seq(4, 0..9)).hit_blocks, 1, "A0 kept, A1 gone");
        // A1 came back, evicting B1, the least recently used.
        assert_eq!(c.admit(&seq(4, 100..109)).hit_blocks, 1, "B0 kept, B1 gone");
        assert_eq!(
            c.insert(&seq(4, 0..4)),
            0,
            "touching a cached block evicts nothing"
        );
    }
}
