//! A minimal GGUF v3 writer, used to build test files (and corrupt ones) without Python.

use crate::{GgmlType, Value};

/// Builds a GGUF v3 file in memory.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

impl GgufWriter {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata entry.
    pub fn meta(mut self, key: &str, value: Value) -> Self {
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Adds a tensor; `dims` in GGUF order (innermost first), `data` already encoded.
    pub fn tensor(mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> Self {
        self.tensors
            .push((name.to_string(), dims.to_vec(), ty, data));
        self
    }

    /// Adds an F32 tensor.
    pub fn f32_tensor(self, name: &str, dims: &[u64], values: &[f32]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, dims, GgmlType::F32, data)
    }

    /// The encoded file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            out.extend_from_slice(&type_code(v).to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (name, dims, ty, data) in &self.tensors {
            put_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&code_of(*ty).to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len() as u64).div_ceil(32) * 32;
        }
        while out.len() % 32 != 0 {
            out.push(0);
        }
        let base = out.len();
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            out.resize(base + off as usize, 0);
            out.extend_from_slice(data);
        }
        out
    }

    /// The file split into `n` parts as llama.cpp's `gguf-split` writes them: the tensors in
    /// order, spread evenly; every part has `split.no` (u16, 0-based), `split.count` (u16) and
    /// `split.tensors.count` (i32); the first part also has all the metadata. Name the parts
    /// with [`crate::split_path`] (`NAME-00001-of-0000N.gguf`).
    pub fn to_split_bytes(&self, n: usize) -> Vec<Vec<u8>> {
        let n = n.clamp(1, self.tensors.len().max(1));
        let per = self.tensors.len().div_ceil(n).max(1);
        let chunks: Vec<_> = if self.tensors.is_empty() {
            vec![&self.tensors[..]]
        } else {
            self.tensors.chunks(per).collect()
        };
        let count = chunks.len();
        chunks
            .into_iter()
            .enumerate()
            .map(|(k, tensors)| {
                let split = [
                    ("split.no".to_string(), Value::U16(k as u16)),
                    ("split.count".to_string(), Value::U16(count as u16)),
                    (
                        "split.tensors.count".to_string(),
                        Value::I32(self.tensors.len() as i32),
                    ),
                ];
                let mut metadata: Vec<(String, Value)> = if k == 0 {
                    self.metadata
                        .iter()
                        .filter(|(key, _)| !key.starts_with("split."))
                        .cloned()
                        .collect()
                } else {
                    Vec::new()
                };
                metadata.extend(split);
                GgufWriter {
                    metadata,
                    tensors: tensors.to_vec(),
                }
                .to_bytes()
            })
            .collect()
    }

    /// Every metadata entry and tensor of `file` (raw bytes, any type), to write it again,
    /// whole or split.
    pub fn copy_of(file: &crate::GgufFile) -> Result<Self, crate::GgufError> {
        let mut w = Self::new();
        for (k, v) in &file.metadata {
            // The writer aligns to 32 bytes, GGUF's default.
            if !k.starts_with("split.") && k != "general.alignment" {
                w = w.meta(k, v.clone());
            }
        }
        for t in &file.tensors {
            w = w.tensor(&t.name, &t.dims, t.ggml_type, file.tensor_data(t)?.to_vec());
        }
        Ok(w)
    }
}

fn code_of(ty: GgmlType) -> u32 {
    (0..64)
        .find(|&c| GgmlType::from_code(c) == Ok(ty))
        .expect("every GgmlType has a code")
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn type_code(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) | Value::Strings(_) | Value::Ints(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_str(out, s),
        Value::Array(items) => {
            let code = items.first().map_or(4, type_code);
            out.extend_from_slice(&code.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                put_value(out, it);
            }
        }
        Value::Ints(a) => {
            out.extend_from_slice(&a.item_code().to_le_bytes());
            out.extend_from_slice(&(a.as_slice().len() as u64).to_le_bytes());
            for &x in a.as_slice() {
                // The values were read as this type, so they fit it.
                match a.item_code() {
                    0 | 1 => out.push(x as u8),
                    2 | 3 => out.extend_from_slice(&(x as u16).to_le_bytes()),
                    4 | 5 => out.extend_from_slice(&(x as u32).to_le_bytes()),
                    _ => out.extend_from_slice(&x.to_le_bytes()),
                }
            }
        }
        Value::Strings(items) => {
            out.extend_from_slice(&8u32.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items.iter() {
                put_str(out, it);
            }
        }
    }
}
