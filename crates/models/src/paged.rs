//! Paged KV memory: fixed-size blocks shared by every sequence of a serving engine (vLLM's
//! PagedAttention layout), for models whose forward runs fused on the CPU.
//!
//! A sequence owns no KV buffer; it has a block table (block ids, in position order) and
//! position `p` lives in block `table[p / block_size]`, slot `p % block_size`. Blocks are
//! f16, laid out `[block][kv head][slot][head dim]`, so the rows of one head inside a block
//! are contiguous and attention walks a sequence block by block. Which block belongs to whom,
//! and sharing full blocks between sequences with the same prefix, is the engine's business;
//! this module only stores and reads. Only full blocks are ever shared, and a sequence only
//! writes past its shared prefix, so no block is written while another sequence reads it.

use half::f16;
use half::slice::HalfBitsSliceExt;
use seek_kernels::vector::Rows;

use crate::{ModelError, Result};

/// What one cached position costs a model: the KV heads and head size of every layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagedLayout {
    /// Decoder layers.
    pub layers: usize,
    /// Hkv.
    pub kv_heads: usize,
    /// D.
    pub head_dim: usize,
}

impl PagedLayout {
    /// Bytes one block of `block_size` positions takes (keys and values, f16).
    pub fn bytes_per_block(&self, block_size: usize) -> usize {
        2 * self.layers * self.kv_heads * block_size * self.head_dim * 2
    }
}

/// The blocks of KV memory of one model.
pub struct KvBlocks {
    layout: PagedLayout,
    block_size: usize,
    n_blocks: usize,
    /// Per layer: keys and values, `[block][kv head][slot][head dim]`, as f16 bits (a zeroed
    /// `u16` buffer is lazily backed by the OS; a zeroed `f16` one would be written out).
    k: Vec<Vec<u16>>,
    v: Vec<Vec<u16>>,
}

/// The new tokens of one sequence in a paged forward.
#[derive(Debug, Clone, Copy)]
pub struct Span<'a> {
    /// Tokens to feed.
    pub tokens: &'a [u32],
    /// Position of the first of them (tokens already cached before it).
    pub start: usize,
    /// The sequence's block table; it must cover positions `0..start + tokens.len()`.
    pub table: &'a [u32],
}

impl KvBlocks {
    /// `n_blocks` blocks of `block_size` positions for a model of this layout. The memory is
    /// zeroed lazily by the OS, so unused blocks cost nothing until written.
    pub fn new(layout: PagedLayout, block_size: usize, n_blocks: usize) -> Result<Self> {
        let per_layer = n_blocks
            .checked_mul(layout.kv_heads * block_size * layout.head_dim)
            .filter(|&n| n > 0 && n <= 1 << 40)
            .ok_or_else(|| {
                ModelError::Input(format!(
                    "a KV cache of {n_blocks} blocks of {block_size} positions is empty or too large"
                ))
            })?;
        Ok(Self {
            layout,
            block_size,
            n_blocks,
            k: (0..layout.layers).map(|_| vec![0u16; per_layer]).collect(),
            v: (0..layout.layers).map(|_| vec![0u16; per_layer]).collect(),
        })
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Number of blocks.
    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    /// The model layout the blocks were made for.
    pub fn layout(&self) -> PagedLayout {
        self.layout
    }

    /// Bytes of KV memory held.
    pub fn bytes(&self) -> usize {
        self.layout.bytes_per_block(self.block_size) * self.n_blocks
    }

    fn head_offset(&self, block: usize, head: usize) -> usize {
        ((block * self.layout.kv_heads + head) * self.block_size) * self.layout.head_dim
    }

    /// Writes position `pos` of the sequence with block table `table` in `layer`: `k, v` are
    /// `(Hkv * D)` rows.
    pub(crate) fn write(
        &mut self,
        layer: usize,
        table: &[u32],
        pos: usize,
        k: &[f32],
        v: &[f32],
    ) -> Result<()> {
        let block = self.block_of(table, pos)?;
        let (hkv, d) = (self.layout.kv_heads, self.layout.head_dim);
        let slot = pos % self.block_size;
        for h in 0..hkv {
            let at = self.head_offset(block, h) + slot * d;
            for (dst, src) in self.k[layer][at..at + d]
                .iter_mut()
                .zip(&k[h * d..(h + 1) * d])
            {
                *dst = f16::from_f32(*src).to_bits();
            }
            for (dst, src) in self.v[layer][at..at + d]
                .iter_mut()
                .zip(&v[h * d..(h + 1) * d])
            {
                *dst = f16::from_f32(*src).to_bits();
            }
        }
        Ok(())
    }

    fn block_of(&self, table: &[u32], pos: usize) -> Result<usize> {
        let b = *table.get(pos / self.block_size).ok_or_else(|| {
            ModelError::Input(format!(
                "position {pos} is past the block table ({} blocks of {}); the engine must allocate blocks first",
                table.len(),
                self.block_size
            ))
        })? as usize;
        if b >= self.n_blocks {
            return Err(ModelError::Input(format!(
                "block {b} is outside the KV memory ({} blocks)",
                self.n_blocks
            )));
        }
        Ok(b)
    }

    /// The keys and values of `head` in `layer` for positions `0..len` of a sequence, one
    /// segment per block, in position order.
    pub(crate) fn segments(
        &self,
        layer: usize,
        table: &[u32],
        head: usize,
        len: usize,
    ) -> Vec<(Rows<'_, f16>, Rows<'_, f16>, usize)> {
        let (bs, d) = (self.block_size, self.layout.head_dim);
        (0..len.div_ceil(bs))
            .map(|i| {
                let offset = self.head_offset(table[i] as usize, head);
                let n = (len - i * bs).min(bs);
                (
                    Rows {
                        data: self.k[layer].reinterpret_cast::<f16>(),
                        offset,
                        stride: d,
                    },
                    Rows {
                        data: self.v[layer].reinterpret_cast::<f16>(),
                        offset,
                        stride: d,
                    },
                    n,
                )
            })
            .collect()
    }
}
