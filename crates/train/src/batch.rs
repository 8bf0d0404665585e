//! From examples to micro-batches: a seeded shuffle per epoch, then right-padded rows or,
//! with packing, several examples per row that never attend to each other.

use seek_models::autograd::Batch;

use crate::data::Example;
use crate::Result;

/// Seeded Fisher-Yates order of `n` items for `epoch`: the same seed gives the same order,
/// so a resumed run sees the data a run without interruption would.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut state = seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// The micro-batches of one epoch: `batch_size` examples each (the last may hold fewer),
/// or with `packing` rows of up to `max_length` tokens filled greedily in order, `batch_size`
/// rows per micro-batch.
pub fn epoch_batches(
    examples: &[Example],
    order: &[usize],
    batch_size: usize,
    packing: bool,
    max_length: usize,
) -> Result<Vec<Batch>> {
    let batch_size = batch_size.max(1);
    if !packing {
        return order
            .chunks(batch_size)
            .map(|idx| {
                let rows: Vec<_> = idx
                    .iter()
                    .map(|&i| (examples[i].input_ids.clone(), examples[i].labels.clone()))
                    .collect();
                Ok(Batch::from_rows(&rows)?)
            })
            .collect();
    }
    // Packed rows: (ids, labels, positions, segments)
    type Row = (Vec<u32>, Vec<Option<u32>>, Vec<u32>, Vec<u32>);
    let mut rows: Vec<Row> = Vec::new();
    let mut cur: Row = Default::default();
    let mut seg = 0u32;
    for &i in order {
        let e = &examples[i];
        if !cur.0.is_empty() && cur.0.len() + e.input_ids.len() > max_length {
            rows.push(std::mem::take(&mut cur));
            seg = 0;
        }
        cur.0.extend(&e.input_ids);
        cur.1.extend(&e.labels);
        cur.2.extend(0..e.input_ids.len() as u32);
        cur.3.extend(std::iter::repeat_n(seg, e.input_ids.len()));
        seg += 1;
    }
    if !cur.0.is_empty() {
        rows.push(cur);
    }
    Ok(rows
        .chunks(batch_size)
        .map(|chunk| {
            let t = chunk.iter().map(|r| r.0.len()).max().unwrap_or(0);
            let pad = |v: &Vec<u32>, fill: u32| {
                let mut v = v.clone();
                v.resize(t, fill);
                v
            };
            Batch {
                input_ids: chunk.iter().map(|r| pad(&r.0, 0)).collect(),
                labels: chunk
                    .iter()
                    .map(|r| {
                        let mut l = r.1.clone();
                        l.resize(t, None);
                        l
                    })
                    .collect(),
                position_ids: chunk.iter().map(|r| pad(&r.2, 0)).collect(),
                // Padding gets its own segment so that no real token attends to it.
                segment_ids: Some(chunk.iter().map(|r| pad(&r.3, u32::MAX)).collect()),
                weights: None,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(n: usize, line: usize) -> Example {
        Example {
            input_ids: (0..n as u32).collect(),
            labels: (0..n)
                .map(|j| (j + 1 < n).then_some(j as u32 + 1))
                .collect(),
            line,
        }
    }

    #[test]
    fn order_is_a_seeded_permutation() {
        let a = epoch_order(50, 42, 0);
        assert_eq!(a, epoch_order(50, 42, 0));
        assert_ne!(a, epoch_order(50, 42, 1));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn packing_fills_rows_and_keeps_sequences_apart() {
        let exs = vec![ex(5, 1), ex(4, 2), ex(6, 3)];
        let b = epoch_batches(&exs, &[0, 1, 2], 2, true, 10).unwrap();
        assert_eq!(b.len(), 1);
        let batch = &b[0];
        assert_eq!(batch.input_ids[0].len(), 9);
        assert_eq!(batch.position_ids[0], vec![0, 1, 2, 3, 4, 0, 1, 2, 3]);
        let seg = batch.segment_ids.as_ref().unwrap();
        assert_eq!(seg[0], vec![0, 0, 0, 0, 0, 1, 1, 1, 1]);
        // The second row (6 tokens) is padded to 9 with its own segment.
        assert_eq!(seg[1][6..], [u32::MAX; 3]);
        // A sequence's last token predicts nothing (not the next sequence's first).
        assert_eq!(batch.labels[0][4], None);
        assert_eq!(batch.n_labels(), 4 + 3 + 5);
    }

    #[test]
    fn unpacked_batches_pad_right() {
        let exs = vec![ex(3, 1), ex(5, 2), ex(2, 3)];
        let b = epoch_batches(&exs, &[0, 1, 2], 2, false, 10).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].input_ids[0], vec![0, 1, 2, 0, 0]);
        assert_eq!(b[0].labels[0][2..], [None, None, None]);
        assert_eq!(b[1].dims(), (1, 2));
    }
}
