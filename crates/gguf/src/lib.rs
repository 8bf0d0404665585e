//! A strict, memory-mapped reader for GGUF v2/v3 model files.
//!
//! Design decision: a model file is untrusted input. Every length, count and offset read from
//! the header is checked against the bytes that remain before anything is allocated or sliced,
//! so a corrupt or hostile file yields a [`GgufError`] that names the file and the problem,
//! never a panic or an allocation sized by an unchecked field. The header is parsed eagerly;
//! tensor data stays in the memory map and is bounds-checked when it is asked for, which lets
//! a truncated file still show its metadata (tokenizer, chat template) to `seek inspect`.
#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

mod types;
pub mod writer;
pub use types::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Deepest nesting of arrays inside arrays that is accepted.
const MAX_ARRAY_DEPTH: usize = 4;
/// Most dimensions a tensor may have (ggml's GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;

/// A GGUF file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct GgufError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: Problem,
}

/// What is wrong with a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// The file could not be opened or mapped.
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    /// The first four bytes are not `GGUF`.
    #[error("not a GGUF file: it starts with {0:?}, not \"GGUF\" (is it a safetensors file or a Hugging Face folder? pass the folder instead)")]
    BadMagic([u8; 4]),
    /// A version other than 2 or 3.
    #[error("GGUF version {0} is not supported (only v2 and v3); convert the model again with a current llama.cpp `convert_hf_to_gguf.py`")]
    UnsupportedVersion(u32),
    /// The header ends before a field that it declares.
    #[error("the header is truncated or corrupt: {what} at byte {offset} needs {needed} bytes, but the file has {available} left")]
    Truncated {
        /// The field being read.
        what: String,
        /// Where it starts.
        offset: u64,
        /// Bytes it needs.
        needed: u64,
        /// Bytes that remain.
        available: u64,
    },
    /// A value has a type code that GGUF does not define.
    #[error("metadata key {key:?} has unknown value type {code}; the file is corrupt")]
    UnknownValueType {
        /// The key.
        key: String,
        /// The type code.
        code: u32,
    },
    /// A string is not UTF-8.
    #[error("{what} is not valid UTF-8; the file is corrupt")]
    BadUtf8 {
        /// Which string.
        what: String,
    },
    /// Something structural is out of the allowed range.
    #[error("{0}")]
    Invalid(String),
    /// A metadata key the caller needs is missing.
    #[error("metadata key {0:?} is missing; the file was not written by a llama.cpp converter, or for another architecture")]
    MissingKey(String),
    /// A metadata key has a type other than the one needed.
    #[error("metadata key {key:?} should be {expected} but is {found}")]
    WrongType {
        /// The key.
        key: String,
        /// The wanted type.
        expected: &'static str,
        /// What the file holds.
        found: &'static str,
    },
    /// A tensor the caller needs is absent.
    #[error("tensor {0:?} is missing from the file")]
    MissingTensor(String),
    /// Tensor data lies beyond the end of the file.
    #[error("the file is truncated: tensor {name:?} needs bytes {start}..{end} but the file has only {file_len} bytes ({percent:.1}% of the {expected_len} bytes its header describes); download it again")]
    TensorOutOfBounds {
        /// The tensor.
        name: String,
        /// First byte, absolute.
        start: u64,
        /// One past the last byte, absolute.
        end: u64,
        /// Length of the file.
        file_len: u64,
        /// Length the header implies.
        expected_len: u64,
        /// `file_len / expected_len`, in percent.
        percent: f64,
    },
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    /// An array of strings as read from a file: one buffer instead of a `Value::String` per
    /// item (a 152K-token vocabulary and its merges were 300K small allocations and about
    /// 20 MB held for the life of the model). Arrays built in code may still use
    /// `Array(vec![Value::String(..), ..])`; the accessors and the writer take both.
    Strings(StrArray),
    /// An array of integers of one type up to 32 bits, or of i64, as read from a file: an
    /// `i64` per item instead of a `Value` (R1's 152K token types were 4.9 MB as `Value`s).
    Ints(IntArray),
}

/// Integers of one GGUF type (see [`Value::Ints`]).
#[derive(Debug, Clone, PartialEq)]
pub struct IntArray {
    /// The GGUF type code of the items: 0 (u8) to 5 (i32), or 11 (i64).
    code: u32,
    items: Vec<i64>,
}

impl IntArray {
    /// The items.
    pub fn as_slice(&self) -> &[i64] {
        &self.items
    }

    /// The GGUF type code of the items.
    pub fn item_code(&self) -> u32 {
        self.code
    }
}

/// Strings stored end to end in one buffer (see [`Value::Strings`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StrArray {
    text: String,
    /// `ends[i]` is where string `i` ends in `text`.
    ends: Vec<usize>,
}

impl StrArray {
    /// An empty array with room for `n` strings.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            text: String::new(),
            ends: Vec::with_capacity(n),
        }
    }

    /// Appends a string.
    pub fn push(&mut self, s: &str) {
        self.text.push_str(s);
        self.ends.push(self.text.len());
    }

    /// Number of strings.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// String `i`.
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.text[start..end])
    }

    /// The strings in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(|i| self.get(i).expect("index in range"))
    }
}

impl Value {
    /// The GGUF name of this value's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F32(_) => "f32",
            Value::F64(_) => "f64",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) | Value::Strings(_) | Value::Ints(_) => "array",
        }
    }

    /// Any integer type as `i64` (u64 values above `i64::MAX` give `None`).
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => i64::try_from(v).ok()?,
            Value::I64(v) => v,
            _ => return None,
        })
    }

    /// Any float (or integer) type as `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// `[a, b, … N items]`: the first 8 items of an array of `n`.
fn show_items<T: fmt::Display>(
    f: &mut fmt::Formatter<'_>,
    n: usize,
    items: impl Iterator<Item = T>,
) -> fmt::Result {
    write!(f, "[")?;
    for (i, v) in items.take(8).enumerate() {
        if i > 0 {
            write!(f, ", ")?;
        }
        write!(f, "{v}")?;
    }
    if n > 8 {
        write!(f, ", … {n} items")?;
    }
    write!(f, "]")
}

/// A string shown in quotes, as `Value::String` shows.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::String(s) => write!(f, "{s:?}"),
            Value::Array(items) => show_items(f, items.len(), items.iter()),
            Value::Ints(a) => show_items(f, a.items.len(), a.items.iter()),
            Value::Strings(items) => show_items(f, items.len(), items.iter().map(Quoted)),
            Value::Bool(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            other => write!(
                f,
                "{}",
                other
                    .as_i64()
                    .map_or_else(|| "?".to_string(), |v| v.to_string())
            ),
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in GGUF order: `dims[0]` is the innermost (contiguous) one.
    pub dims: Vec<u64>,
    /// Element encoding.
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes.
    pub n_bytes: u64,
    /// Which file of a split model holds it (0 for a single file).
    pub part: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Shape in row-major order (outermost first), as candle and PyTorch write it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// How a model's files are brought into memory (llama.cpp's `--no-mmap` and `--mlock`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Read the files into memory instead of mapping them (the default maps them and reads
    /// weights in place, so a model larger than memory still runs, paged from disk).
    pub no_mmap: bool,
    /// Lock the weights in memory (`mlock`): no paging to disk; fails when the limit
    /// (`ulimit -l`) or the memory is too small.
    pub mlock: bool,
}

/// One file of a (possibly split) GGUF model.
struct Part {
    path: PathBuf,
    mmap: memmap2::Mmap,
    data_offset: u64,
}

/// An open, memory-mapped GGUF model with its parsed header: one file, or every part of a
/// model split as llama.cpp's `gguf-split` writes it (`NAME-00001-of-00003.gguf`, ...), opened
/// from any one of them.
pub struct GgufFile {
    path: PathBuf,
    parts: Vec<Part>,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata in key order (the first part's: the others hold only `split.*`).
    pub metadata: BTreeMap<String, Value>,
    /// Tensor descriptions in file order, part after part.
    pub tensors: Vec<TensorInfo>,
    by_name: BTreeMap<String, usize>,
}

/// One parsed file.
struct Parsed {
    version: u32,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
    data_offset: u64,
}

/// `split.no`, `split.count` and `split.tensors.count` of a part, when it has them.
fn split_keys(m: &BTreeMap<String, Value>) -> Option<(u64, u64, u64)> {
    let get = |k: &str| {
        m.get(k)
            .and_then(Value::as_i64)
            .and_then(|v| u64::try_from(v).ok())
    };
    Some((
        get("split.no")?,
        get("split.count")?,
        get("split.tensors.count")?,
    ))
}

/// The path of part `no` (0-based) of `count` beside `path`, llama.cpp's naming
/// (`PREFIX-%05d-of-%05d.gguf`); `None` when `path` is not named that way.
pub fn split_path(path: &Path, no: u64, count: u64) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".gguf")?;
    // PREFIX-00001-of-00003
    let (rest, total) = stem.rsplit_once("-of-")?;
    let (prefix, _) = rest.rsplit_once('-')?;
    if total.len() != 5 || !total.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(path.with_file_name(format!("{prefix}-{:05}-of-{count:05}.gguf", no + 1)))
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("parts", &self.parts.len())
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and memory-maps `path` and parses its header; for a split model (`split.count` >
    /// 1), every part too: they must all be there, belong to the same split (same count and
    /// tensor total, each its own number) and together hold each tensor once.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        Self::open_with(path, OpenOptions::default())
    }

    /// [`Self::open`] with `--no-mmap` / `--mlock` semantics.
    pub fn open_with(path: impl AsRef<Path>, opts: OpenOptions) -> Result<Self, GgufError> {
        let path = path.as_ref().to_path_buf();
        let (mmap, first) = Self::open_part(&path, opts)?;
        let Some((no, count, total)) = split_keys(&first.metadata).filter(|k| k.1 > 1) else {
            let by_name = first
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect();
            return Ok(Self {
                path: path.clone(),
                parts: vec![Part {
                    path,
                    mmap,
                    data_offset: first.data_offset,
                }],
                version: first.version,
                metadata: first.metadata,
                tensors: first.tensors,
                by_name,
            });
        };
        let err = |path: &Path, msg: String| GgufError {
            path: path.to_path_buf(),
            problem: Problem::Invalid(msg),
        };
        if count > 1024 {
            return Err(err(
                &path,
                format!(
                    "split.count {count} is not a believable number of parts; the file is corrupt"
                ),
            ));
        }
        let name_of = |k: u64| {
            split_path(&path, k, count).ok_or_else(|| {
                err(
                    &path,
                    format!("this is part {} of {count} of a split model, but its name does not follow llama.cpp's NAME-00001-of-{count:05}.gguf, so the other parts cannot be found; rename the parts as gguf-split wrote them", no + 1),
                )
            })
        };
        let mut parts = Vec::with_capacity(count as usize);
        let mut tensors = Vec::new();
        let mut metadata = BTreeMap::new();
        let mut version = first.version;
        let mut first = Some((mmap, first));
        for k in 0..count {
            let p = name_of(k)?;
            let (mmap, parsed) = if k == no {
                first
                    .take()
                    .ok_or_else(|| err(&path, "a part appears twice".into()))?
            } else {
                if !p.is_file() {
                    return Err(err(
                        &p,
                        format!("part {} of {count} of the split model is missing (opened {}); download every part into the same folder", k + 1, path.display()),
                    ));
                }
                Self::open_part(&p, opts)?
            };
            match split_keys(&parsed.metadata) {
                Some((pno, pcount, ptotal)) if pno == k && pcount == count && ptotal == total => {}
                other => {
                    return Err(err(
                        &p,
                        format!(
                            "does not belong with {}: it says split.no/split.count/split.tensors.count = {}, expected {k}/{count}/{total}; the parts come from different downloads",
                            path.display(),
                            other.map_or("(none)".into(), |(a, b, c)| format!("{a}/{b}/{c}"))
                        ),
                    ))
                }
            }
            if k == 0 {
                metadata = parsed.metadata;
                version = parsed.version;
            }
            for mut t in parsed.tensors {
                t.part = k as usize;
                tensors.push(t);
            }
            parts.push(Part {
                path: p,
                mmap,
                data_offset: parsed.data_offset,
            });
        }
        let mut by_name = BTreeMap::new();
        for (i, t) in tensors.iter().enumerate() {
            if by_name.insert(t.name.clone(), i).is_some() {
                return Err(err(&path, format!("tensor {:?} is in two parts of the split model; the parts come from different downloads", t.name)));
            }
        }
        if tensors.len() as u64 != total {
            return Err(err(&path, format!("the parts hold {} tensors but split.tensors.count says {total}; a part is truncated or from another download", tensors.len())));
        }
        Ok(Self {
            path: parts[0].path.clone(),
            parts,
            version,
            metadata,
            tensors,
            by_name,
        })
    }

    fn open_part(path: &Path, opts: OpenOptions) -> Result<(memmap2::Mmap, Parsed), GgufError> {
        let err = |problem| GgufError {
            path: path.to_path_buf(),
            problem,
        };
        let mut file = std::fs::File::open(path).map_err(|e| err(Problem::Io(e)))?;
        let mmap = if opts.no_mmap {
            // Anonymous, page-aligned memory holding a copy of the file.
            let len = file.metadata().map_err(|e| err(Problem::Io(e)))?.len() as usize;
            let mut m = memmap2::MmapOptions::new()
                .len(len.max(1))
                .map_anon()
                .map_err(|e| err(Problem::Io(e)))?;
            std::io::Read::read_exact(&mut file, &mut m[..len]).map_err(|e| err(Problem::Io(e)))?;
            m.make_read_only().map_err(|e| err(Problem::Io(e)))?
        } else {
            // SAFETY: the map is read-only. Like every mmap-based loader (llama.cpp,
            // safetensors) we rely on the file not being truncated by another process while it
            // is open.
            unsafe { memmap2::Mmap::map(&file) }.map_err(|e| err(Problem::Io(e)))?
        };
        if opts.mlock {
            mmap.lock().map_err(|e| {
                err(Problem::Invalid(format!(
                    "cannot lock its {} bytes in memory ({e}); raise the limit (`ulimit -l unlimited`, or LimitMEMLOCK for a service), free memory, or run without --mlock",
                    mmap.len()
                )))
            })?;
        }
        let parsed = Self::parse(&mmap).map_err(err)?;
        Ok((mmap, parsed))
    }

    /// A GGUF file held in memory (a test's bytes, a fuzzer's input): parsed as [`Self::open`]
    /// parses a file, named `<memory>` in errors; a split part stands alone.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, GgufError> {
        let path = PathBuf::from("<memory>");
        let err = |problem| GgufError {
            path: path.clone(),
            problem,
        };
        let mut m = memmap2::MmapOptions::new()
            .len(bytes.len().max(1))
            .map_anon()
            .map_err(|e| err(Problem::Io(e)))?;
        m[..bytes.len()].copy_from_slice(bytes);
        let mmap = m.make_read_only().map_err(|e| err(Problem::Io(e)))?;
        let parsed = Self::parse(&mmap[..bytes.len()]).map_err(err)?;
        let by_name = parsed
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Self {
            path: path.clone(),
            parts: vec![Part {
                path,
                mmap,
                data_offset: parsed.data_offset,
            }],
            version: parsed.version,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            by_name,
        })
    }

    /// The files of the model, in part order (one for a file that is not split).
    pub fn part_paths(&self) -> Vec<&Path> {
        self.parts.iter().map(|p| p.path.as_path()).collect()
    }

    fn parse(mmap: &[u8]) -> Result<Parsed, Problem> {
        let mut r = Reader { buf: mmap, pos: 0 };
        let magic: [u8; 4] = r.bytes(4, "the magic number")?.try_into().expect("4 bytes");
        if &magic != MAGIC {
            return Err(Problem::BadMagic(magic));
        }
        let version = r.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(Problem::UnsupportedVersion(version));
        }
        let n_tensors = r.u64("the tensor count")?;
        let n_kv = r.u64("the metadata count")?;
        // Each key-value pair needs at least 8 (key length) + 4 (type) + 1 bytes; each tensor
        // info at least 8 + 4 + 4 + 8. Counts beyond what the file could hold are corrupt.
        r.check_count(n_kv, 13, "metadata entries")?;
        r.check_count(n_tensors, 24, "tensor infos")?;

        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string("a metadata key")?;
            let code = r.u32(&format!("the type of {key:?}"))?;
            let value = r.value(code, &key, 0)?;
            metadata.insert(key, value);
        }

        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut by_name = BTreeMap::new();
        for _ in 0..n_tensors {
            let name = r.string("a tensor name")?;
            let n_dims = r.u32(&format!("the rank of tensor {name:?}"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(Problem::Invalid(format!(
                    "tensor {name:?} has {n_dims} dimensions; GGUF allows 1 to {MAX_DIMS}; the file is corrupt"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64(&format!("a dimension of tensor {name:?}"))?);
            }
            let code = r.u32(&format!("the type of tensor {name:?}"))?;
            let ggml_type = GgmlType::from_code(code)
                .map_err(|msg| Problem::Invalid(format!("tensor {name:?}: {msg}")))?;
            let offset = r.u64(&format!("the offset of tensor {name:?}"))?;
            let n_bytes = tensor_bytes(&name, &dims, ggml_type)?;
            if by_name.insert(name.clone(), tensors.len()).is_some() {
                return Err(Problem::Invalid(format!(
                    "tensor {name:?} appears twice; the file is corrupt"
                )));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
                n_bytes,
                part: 0,
            });
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_i64() {
                Some(a) if a > 0 && (a as u64).is_power_of_two() && a <= 1 << 20 => a as u64,
                _ => {
                    return Err(Problem::Invalid(format!(
                        "general.alignment is {v}; it must be a power of two"
                    )))
                }
            },
        };
        let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
        for t in &tensors {
            if t.offset % alignment != 0 {
                return Err(Problem::Invalid(format!(
                    "tensor {:?} starts at offset {}, which is not a multiple of the alignment {alignment}; the file is corrupt",
                    t.name, t.offset
                )));
            }
        }
        drop(by_name);
        Ok(Parsed {
            version,
            metadata,
            tensors,
            data_offset,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the file in bytes (of all parts, for a split model).
    pub fn file_len(&self) -> u64 {
        self.parts.iter().map(|p| p.mmap.len() as u64).sum()
    }

    /// The length that the header implies: the end of the last tensor's data (summed over the
    /// parts of a split model).
    pub fn expected_len(&self) -> u64 {
        (0..self.parts.len())
            .map(|k| self.part_expected_len(k))
            .sum()
    }

    fn part_expected_len(&self, k: usize) -> u64 {
        let off = self.parts[k].data_offset;
        self.tensors
            .iter()
            .filter(|t| t.part == k)
            .map(|t| off.saturating_add(t.offset).saturating_add(t.n_bytes))
            .max()
            .unwrap_or(off)
    }

    fn error(&self, problem: Problem) -> GgufError {
        GgufError {
            path: self.path.clone(),
            problem,
        }
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key)
            .ok_or_else(|| self.error(Problem::MissingKey(key.to_string())))
    }

    fn wrong(&self, key: &str, expected: &'static str, v: &Value) -> GgufError {
        self.error(Problem::WrongType {
            key: key.to_string(),
            expected,
            found: v.type_name(),
        })
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong(key, "a string", v))
    }

    /// A non-negative integer value of any width.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        v.as_i64()
            .and_then(|x| u64::try_from(x).ok())
            .ok_or_else(|| self.wrong(key, "a non-negative integer", v))
    }

    /// A float value (integers are accepted).
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| self.wrong(key, "a number", v))
    }

    /// A boolean value.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        match self.require(key)? {
            Value::Bool(b) => Ok(*b),
            v => Err(self.wrong(key, "a bool", v)),
        }
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        match self.require(key)? {
            Value::Strings(items) => Ok(items.iter().collect()),
            // An empty array of another type is an empty list of strings (as before the
            // compact forms: a writer may not know an empty array's item type).
            Value::Ints(a) if a.as_slice().is_empty() => Ok(Vec::new()),
            Value::Array(items) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| self.wrong(key, "an array of strings", v))
                })
                .collect(),
            v => Err(self.wrong(key, "an array of strings", v)),
        }
    }

    /// An array of integers.
    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>, GgufError> {
        match self.require(key)? {
            Value::Ints(a) => Ok(a.items.clone()),
            Value::Strings(items) if items.is_empty() => Ok(Vec::new()),
            Value::Array(items) => items
                .iter()
                .map(|v| {
                    v.as_i64()
                        .ok_or_else(|| self.wrong(key, "an array of integers", v))
                })
                .collect(),
            v => Err(self.wrong(key, "an array of integers", v)),
        }
    }

    /// A tensor's description.
    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.by_name
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| self.error(Problem::MissingTensor(name.to_string())))
    }

    /// Whether a tensor is present.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The raw bytes of a tensor, straight from the memory map.
    pub fn tensor_data(&self, info: &TensorInfo) -> Result<&[u8], GgufError> {
        let Some(part) = self.parts.get(info.part) else {
            return Err(self.error(Problem::Invalid(format!(
                "tensor {:?} names part {} of a model with {}",
                info.name,
                info.part + 1,
                self.parts.len()
            ))));
        };
        let len = part.mmap.len() as u64;
        let start = part.data_offset.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(info.n_bytes));
        match (start, end) {
            (Some(start), Some(end)) if end <= len => Ok(&part.mmap[start as usize..end as usize]),
            _ => {
                let expected_len = self.part_expected_len(info.part);
                Err(GgufError {
                    path: part.path.clone(),
                    problem: Problem::TensorOutOfBounds {
                        name: info.name.clone(),
                        start: start.unwrap_or(u64::MAX),
                        end: end.unwrap_or(u64::MAX),
                        file_len: len,
                        expected_len,
                        percent: 100.0 * len as f64 / expected_len.max(1) as f64,
                    },
                })
            }
        }
    }

    /// Checks that every tensor's data lies inside the file: the first check a loader makes,
    /// so that a truncated download fails before any work with one clear message.
    pub fn check_tensor_data(&self) -> Result<(), GgufError> {
        for t in &self.tensors {
            self.tensor_data(t)?;
        }
        Ok(())
    }
}

fn tensor_bytes(name: &str, dims: &[u64], ty: GgmlType) -> Result<u64, Problem> {
    let invalid =
        |why: String| Problem::Invalid(format!("tensor {name:?} {why}; the file is corrupt"));
    let mut n: u64 = 1;
    for &d in dims {
        n = n
            .checked_mul(d)
            .ok_or_else(|| invalid(format!("has dimensions {dims:?} whose product overflows")))?;
    }
    let (block, size) = ty.block_layout();
    if !dims[0].is_multiple_of(block) {
        return Err(invalid(format!(
            "has a row of {} elements, not a multiple of the {} block size {block}",
            dims[0],
            ty.name()
        )));
    }
    (n / block)
        .checked_mul(size)
        .ok_or_else(|| invalid(format!("has dimensions {dims:?} whose byte size overflows")))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn bytes(&mut self, n: u64, what: &str) -> Result<&'a [u8], Problem> {
        if n > self.remaining() {
            return Err(Problem::Truncated {
                what: what.to_string(),
                offset: self.pos as u64,
                needed: n,
                available: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<(), Problem> {
        match count.checked_mul(min_size) {
            Some(n) if n <= self.remaining() => Ok(()),
            _ => Err(Problem::Invalid(format!(
                "the header declares {count} {what}, more than the {} remaining bytes could hold; the file is corrupt",
                self.remaining()
            ))),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], Problem> {
        Ok(self.bytes(N as u64, what)?.try_into().expect("N bytes"))
    }
    fn u32(&mut self, what: &str) -> Result<u32, Problem> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, Problem> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, Problem> {
        self.str(what).map(str::to_string)
    }

    /// A string in place (no copy).
    fn str(&mut self, what: &str) -> Result<&'a str, Problem> {
        let len = self.u64(what)?;
        let raw = self.bytes(len, what)?;
        std::str::from_utf8(raw).map_err(|_| Problem::BadUtf8 {
            what: what.to_string(),
        })
    }

    fn value(&mut self, code: u32, key: &str, depth: usize) -> Result<Value, Problem> {
        Ok(match code {
            0 => Value::U8(u8::from_le_bytes(self.array(key)?)),
            1 => Value::I8(i8::from_le_bytes(self.array(key)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(key)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(Problem::Invalid(format!(
                        "metadata key {key:?} holds bool byte {b}; the file is corrupt"
                    )))
                }
            },
            8 => Value::String(self.string(&format!("the value of {key:?}"))?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Problem::Invalid(format!(
                        "metadata key {key:?} nests arrays deeper than {MAX_ARRAY_DEPTH}; the file is corrupt"
                    )));
                }
                let item_code = self.u32(key)?;
                let count = self.u64(key)?;
                let min_size = match item_code {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10 | 11 | 12 => 8,
                    9 => 12,
                    code => {
                        return Err(Problem::UnknownValueType {
                            key: key.to_string(),
                            code,
                        })
                    }
                };
                self.check_count(count, min_size, &format!("items in {key:?}"))?;
                if item_code == 8 {
                    let what = format!("an item of {key:?}");
                    let mut items = StrArray::with_capacity(count as usize);
                    for _ in 0..count {
                        items.push(self.str(&what)?);
                    }
                    return Ok(Value::Strings(items));
                }
                if matches!(item_code, 0..=5 | 11) {
                    let mut items = Vec::with_capacity(count as usize);
                    for _ in 0..count {
                        items.push(match item_code {
                            0 => u8::from_le_bytes(self.array(key)?).into(),
                            1 => i8::from_le_bytes(self.array(key)?).into(),
                            2 => u16::from_le_bytes(self.array(key)?).into(),
                            3 => i16::from_le_bytes(self.array(key)?).into(),
                            4 => u32::from_le_bytes(self.array(key)?).into(),
                            5 => i32::from_le_bytes(self.array(key)?).into(),
                            _ => i64::from_le_bytes(self.array(key)?),
                        });
                    }
                    return Ok(Value::Ints(IntArray {
                        code: item_code,
                        items,
                    }));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(item_code, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(u64::from_le_bytes(self.array(key)?)),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            code => {
                return Err(Problem::UnknownValueType {
                    key: key.to_string(),
                    code,
                })
            }
        })
    }
}

#[cfg(test)]
mod tests;
