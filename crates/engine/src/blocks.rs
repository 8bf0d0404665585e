//! The KV block manager: which block of the paged KV memory belongs to which sequence, and
//! prefix caching by block hash (vLLM's automatic prefix caching).
//!
//! A full block is identified by the hash of its tokens chained to the hash of the block
//! before it, so equal hashes mean equal prefixes. When a sequence fills a block, the block
//! is registered under its hash; a new sequence whose prompt starts with the same blocks
//! takes them (reference counted) instead of computing them. A block nobody references any
//! more stays cached until its memory is needed, least recently used first. Only full blocks
//! are shared, and a sequence writes only past its shared prefix.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use seek_types::TokenId;

/// The hash of a full block following a prefix with hash `parent`.
pub fn block_hash(parent: u64, tokens: &[TokenId]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// Block ownership and the prefix cache over `n` blocks of `block_size` positions.
#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    refs: Vec<u32>,
    hash_of: Vec<Option<u64>>,
    by_hash: HashMap<u64, u32>,
    /// Blocks holding nothing worth keeping.
    free: Vec<u32>,
    /// When each block was last released (for evicting cached blocks).
    released: Vec<u64>,
    clock: u64,
}

/// What a sequence's table starts with when it is admitted.
#[derive(Debug, Clone, PartialEq)]
pub struct Reused {
    /// Blocks taken from the prefix cache, in order.
    pub blocks: Vec<u32>,
    /// Hash of the last reused block (the parent of the next), or 0.
    pub hash: u64,
}

impl BlockManager {
    /// A manager of `n` blocks of `block_size` positions, all free.
    pub fn new(n: usize, block_size: usize) -> Self {
        Self {
            block_size,
            refs: vec![0; n],
            hash_of: vec![None; n],
            by_hash: HashMap::new(),
            free: (0..n as u32).rev().collect(),
            released: vec![0; n],
            clock: 0,
        }
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks that could be handed out now (free plus cached and unreferenced).
    pub fn available(&self) -> usize {
        self.free.len() + self.evictable().count()
    }

    /// Blocks referenced by running sequences.
    pub fn in_use(&self) -> usize {
        self.refs.iter().filter(|&&r| r > 0).count()
    }

    /// Full blocks kept for reuse.
    pub fn cached(&self) -> usize {
        self.by_hash.len()
    }

    fn evictable(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_hash
            .values()
            .copied()
            .filter(|&b| self.refs[b as usize] == 0)
    }

    /// The longest run of cached blocks `prompt` starts with, leaving at least its last
    /// token to be computed (its logits start generation); the blocks are now referenced.
    pub fn reuse(&mut self, prompt: &[TokenId]) -> Reused {
        let mut out = Reused {
            blocks: Vec::new(),
            hash: 0,
        };
        let usable = prompt.len().saturating_sub(1) / self.block_size;
        for i in 0..usable {
            let h = block_hash(
                out.hash,
                &prompt[i * self.block_size..(i + 1) * self.block_size],
            );
            let Some(&b) = self.by_hash.get(&h) else {
                break;
            };
            self.refs[b as usize] += 1;
            out.blocks.push(b);
            out.hash = h;
        }
        out
    }

    /// A block for a sequence to write: a free one, or the least recently released cached
    /// one (dropped from the prefix cache). `None` when every block is referenced.
    pub fn allocate(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let b = self
                    .evictable()
                    .min_by_key(|&b| (self.released[b as usize], b))?;
                if let Some(h) = self.hash_of[b as usize].take() {
                    self.by_hash.remove(&h);
                }
                b
            }
        };
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// Records that `block` now holds the full block with hash `hash` (unless another block
    /// already holds it: then this one simply stays private).
    pub fn register(&mut self, block: u32, hash: u64) {
        if self.hash_of[block as usize].is_none() && !self.by_hash.contains_key(&hash) {
            self.by_hash.insert(hash, block);
            self.hash_of[block as usize] = Some(hash);
        }
    }

    /// Drops a sequence's references to `blocks`; cached ones stay for reuse, the others
    /// become free.
    pub fn release(&mut self, blocks: &[u32]) {
        self.clock += 1;
        for &b in blocks {
            let r = &mut self.refs[b as usize];
            *r = r.saturating_sub(1);
            if *r == 0 {
                self.released[b as usize] = self.clock;
                if self.hash_of[b as usize].is_none() {
                    self.free.push(b);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_hashes(tokens: &[TokenId], bs: usize) -> Vec<u64> {
        let mut h = 0;
        tokens
            .chunks_exact(bs)
            .map(|c| {
                h = block_hash(h, c);
                h
            })
            .collect()
    }

    #[test]
    fn a_shared_prefix_is_reused_block_by_block() {
        let mut m = BlockManager::new(8, 4);
        let a: Vec<u32> = (0..10).collect();
        // Sequence A computes 3 blocks and registers its 2 full ones.
        let blocks: Vec<u32> = (0..3).map(|_| m.allocate().unwrap()).collect();
        for (b, h) in blocks.iter().zip(full_hashes(&a, 4)) {
            m.register(*b, h);
        }
        // B shares the first 6 tokens: one whole block, not the second (it differs).
        let mut b: Vec<u32> = a[..6].to_vec();
        b.extend([99, 98, 97]);
        let r = m.reuse(&b);
        assert_eq!(r.blocks, vec![blocks[0]]);
        // A prompt equal to A's 8 tokens reuses one block only: its last token must be fed.
        let r = m.reuse(&a[..8]);
        assert_eq!(r.blocks, vec![blocks[0]]);
        // With a 9th token both blocks come back.
        let r = m.reuse(&a[..9]);
        assert_eq!(r.blocks, blocks[..2].to_vec());
    }

    #[test]
    fn released_cached_blocks_stay_until_memory_is_needed() {
        let mut m = BlockManager::new(3, 2);
        let toks = [1u32, 2, 3, 4];
        let hs = full_hashes(&toks, 2);
        let b0 = m.allocate().unwrap();
        let b1 = m.allocate().unwrap();
        m.register(b0, hs[0]);
        m.register(b1, hs[1]);
        m.release(&[b0, b1]);
        assert_eq!((m.available(), m.cached(), m.in_use()), (3, 2, 0));
        // Still reusable after release.
        assert_eq!(m.reuse(&[1, 2, 3, 4, 5]).blocks, vec![b0, b1]);
        m.release(&[b0, b1]);
        // Taking every block evicts the cached ones, least recently released first.
        let got: Vec<u32> = (0..3).map(|_| m.allocate().unwrap()).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(m.cached(), 0);
        assert_eq!(m.allocate(), None, "every block is referenced");
        assert!(m.reuse(&[1, 2, 3, 4, 5]).blocks.is_empty());
    }

    #[test]
    fn a_block_in_use_is_never_evicted() {
        let mut m = BlockManager::new(2, 2);
        let b0 = m.allocate().unwrap();
        m.register(b0, block_hash(0, &[7, 8]));
        let _b1 = m.allocate().unwrap();
        assert_eq!(m.allocate(), None);
        m.release(&[b0]);
        // b0 is cached and unreferenced: it may be evicted now.
        assert_eq!(m.allocate(), Some(b0));
    }
}
