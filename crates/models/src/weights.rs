//! Where weights come from: a GGUF file (quantized, memory-mapped) or Hugging Face safetensors.
//!
//! Model code asks for tensors by their Hugging Face names (`model.layers.0.self_attn.q_proj.weight`);
//! the GGUF source translates them to llama.cpp names (`blk.0.attn_q.weight`). So each
//! architecture file is written once, against one vocabulary.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::Module;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use seek_gguf::{GgmlType, GgufFile, TensorInfo};
use seek_kernels::{QMatrix, QType, Scratch};

use crate::llama::config_err;
use crate::{ModelError, Result};

/// A source of named weight tensors.
#[derive(Clone)]
pub enum Weights {
    /// Tensors of a GGUF file, kept in their quantized encoding.
    Gguf {
        /// The open file.
        file: Arc<GgufFile>,
        /// Where tensors are placed.
        device: Device,
        /// Threads for Seek's quantized kernels; `None` computes with candle's instead.
        kernels: Option<Arc<seek_kernels::ThreadPool>>,
    },
    /// Tensors of one or more safetensors files, converted to `dtype` on load.
    Safetensors {
        /// The folder they came from (for messages).
        dir: PathBuf,
        /// candle's memory-mapped reader.
        vb: VarBuilder<'static>,
        /// Block size `(rows, cols)` of FP8 weights' `weight_scale_inv` (DeepSeek's published
        /// checkpoints: 128 x 128), from `quantization_config.weight_block_size`.
        fp8_block: (usize, usize),
    },
}

/// Translates a Hugging Face tensor name into the llama.cpp GGUF name.
pub fn gguf_name(hf: &str) -> String {
    const WHOLE: &[(&str, &str)] = &[
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = WHOLE.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    const PARTS: &[(&str, &str)] = &[
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "ffn_norm"),
        // DeepSeek MLA (before `self_attn.q_proj`: no prefix of one is another)
        ("self_attn.q_a_proj", "attn_q_a"),
        ("self_attn.q_a_layernorm", "attn_q_a_norm"),
        ("self_attn.q_b_proj", "attn_q_b"),
        ("self_attn.kv_a_proj_with_mqa", "attn_kv_a_mqa"),
        ("self_attn.kv_a_layernorm", "attn_kv_a_norm"),
        ("self_attn.kv_b_proj", "attn_kv_b"),
        ("self_attn.k_b_proj", "attn_k_b"),
        ("self_attn.v_b_proj", "attn_v_b"),
        // DeepSeekMoE: router, its correction bias, shared experts
        ("mlp.gate.weight", "ffn_gate_inp.weight"),
        ("mlp.gate.e_score_correction_bias", "exp_probs_b.bias"),
        ("mlp.shared_experts.gate_proj", "ffn_gate_shexp"),
        ("mlp.shared_experts.up_proj", "ffn_up_shexp"),
        ("mlp.shared_experts.down_proj", "ffn_down_shexp"),
        // Qwen3's per-head q/k norms (before `self_attn.q_proj`'s prefix would not matter)
        ("self_attn.q_norm", "attn_q_norm"),
        ("self_attn.k_norm", "attn_k_norm"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
    ];
    if let Some(rest) = hf.strip_prefix("model.layers.") {
        if let Some((layer, tail)) = rest.split_once('.') {
            for (h, g) in PARTS {
                if let Some(suffix) = tail.strip_prefix(h) {
                    return format!("blk.{layer}.{g}{suffix}");
                }
            }
            // `mlp.experts.{e}.gate_proj.weight`: one slice of the stacked `ffn_gate_exps`.
            if let Some(rest) = tail.strip_prefix("mlp.experts.") {
                if let Some((_, proj)) = rest.split_once('.') {
                    let g = match proj {
                        "gate_proj.weight" => "ffn_gate_exps",
                        "up_proj.weight" => "ffn_up_exps",
                        "down_proj.weight" => "ffn_down_exps",
                        _ => return hf.to_string(),
                    };
                    return format!("blk.{layer}.{g}.weight");
                }
            }
        }
    }
    hf.to_string()
}

/// The kernel type of a GGUF encoding, when Seek's kernels compute with it.
fn kernel_type(t: GgmlType) -> Option<QType> {
    // The kernels name their types as ggml does.
    QType::from_name(t.name())
}

fn ggml_dtype(t: GgmlType) -> Result<GgmlDType> {
    Ok(match t {
        GgmlType::F32 => GgmlDType::F32,
        GgmlType::F16 => GgmlDType::F16,
        GgmlType::BF16 => GgmlDType::BF16,
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q5_0 => GgmlDType::Q5_0,
        GgmlType::Q5_1 => GgmlDType::Q5_1,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q8_1 => GgmlDType::Q8_1,
        GgmlType::Q2K => GgmlDType::Q2K,
        GgmlType::Q3K => GgmlDType::Q3K,
        GgmlType::Q4K => GgmlDType::Q4K,
        GgmlType::Q5K => GgmlDType::Q5K,
        GgmlType::Q6K => GgmlDType::Q6K,
        GgmlType::Q8K => GgmlDType::Q8K,
        _ => {
            return Err(ModelError::Input(format!(
                "{} tensors are read by Seek's kernels, not by candle",
                t.name()
            )))
        }
    })
}

impl Weights {
    /// Opens the safetensors files of a Hugging Face folder (sharded or not).
    pub fn from_safetensors(
        dir: &Path,
        files: &[PathBuf],
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        // SAFETY: the files are mapped read-only; like every mmap loader we assume no other
        // process truncates them while the model is alive.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(files, dtype, device) }.map_err(|e| {
                ModelError::Config {
                    path: dir.to_path_buf(),
                    problem: format!("cannot read the safetensors weights: {e}"),
                }
            })?;
        Ok(Self::Safetensors {
            dir: dir.to_path_buf(),
            vb,
            fp8_block: (128, 128),
        })
    }

    /// Path of the file or folder, for messages.
    pub fn path(&self) -> &Path {
        match self {
            Self::Gguf { file, .. } => file.path(),
            Self::Safetensors { dir, .. } => dir,
        }
    }

    /// The device tensors are placed on.
    pub fn device(&self) -> &Device {
        match self {
            Self::Gguf { device, .. } => device,
            Self::Safetensors { vb, .. } => vb.device(),
        }
    }

    /// The floating-point type activations use.
    pub fn dtype(&self) -> DType {
        match self {
            Self::Gguf { .. } => DType::F32,
            Self::Safetensors { vb, .. } => vb.dtype(),
        }
    }

    /// Whether a tensor exists.
    pub fn contains(&self, hf_name: &str) -> bool {
        match self {
            Self::Gguf { file, .. } => file.has_tensor(&gguf_name(hf_name)),
            Self::Safetensors { vb, .. } => vb.contains_tensor(hf_name),
        }
    }

    fn missing(&self, name: &str) -> ModelError {
        ModelError::MissingTensor {
            path: self.path().to_path_buf(),
            name: name.to_string(),
        }
    }

    fn qtensor(&self, hf_name: &str, shape: &[usize]) -> Result<QTensor> {
        let Self::Gguf { file, device, .. } = self else {
            unreachable!("qtensor on a GGUF source only")
        };
        let name = gguf_name(hf_name);
        let info = file.tensor_info(&name).map_err(|_| self.missing(&name))?;
        if info.shape() != shape {
            return Err(ModelError::Shape {
                name,
                expected: shape.to_vec(),
                found: info.shape(),
            });
        }
        let data = file.tensor_data(info)?;
        let dtype = ggml_dtype(info.ggml_type)?;
        let storage = QStorage::from_data(std::borrow::Cow::Borrowed(data), device, dtype)?;
        Ok(QTensor::new(storage, shape)?)
    }

    /// A dense tensor (norm weights, biases), always dequantized, in [`Weights::dtype`].
    pub fn tensor(&self, hf_name: &str, shape: &[usize]) -> Result<Tensor> {
        match self {
            Self::Gguf { file, device, .. } => {
                let info = file.tensor_info(&gguf_name(hf_name)).ok();
                match info.map(|i| (i, RowCodec::of(i.ggml_type))) {
                    // The I-quants, which candle cannot decode: Seek's kernels do.
                    Some((info, Ok(RowCodec::Kernel(q)))) if info.shape() == shape => {
                        let cols = *shape.last().unwrap_or(&1);
                        let rows = shape.iter().product::<usize>() / cols.max(1);
                        let t = RowCodec::Kernel(q).decode(file.tensor_data(info)?, rows, cols)?;
                        Ok(t.reshape(shape)?.to_device(device)?)
                    }
                    _ => Ok(self.qtensor(hf_name, shape)?.dequantize(device)?),
                }
            }
            Self::Safetensors { vb, fp8_block, .. } => {
                if !vb.contains_tensor(hf_name) {
                    return Err(self.missing(hf_name));
                }
                let scale_name = format!("{hf_name}_scale_inv");
                if vb.contains_tensor(&scale_name) {
                    return self.fp8_tensor(vb, hf_name, shape, &scale_name, *fp8_block);
                }
                vb.get(shape, hf_name)
                    .map_err(|e| shape_or_candle(hf_name, shape, e))
            }
        }
    }

    /// Sets the FP8 block size (from `quantization_config.weight_block_size`).
    pub fn with_fp8_block(mut self, block: (usize, usize)) -> Self {
        if let Self::Safetensors { fp8_block, .. } = &mut self {
            *fp8_block = block;
        }
        self
    }

    /// An FP8 (e4m3) weight with one f32 `weight_scale_inv` per block of `block` elements,
    /// dequantized: `w[i][j] = fp8[i][j] * scale[i / block.0][j / block.1]`, as DeepSeek's
    /// published V3/R1 checkpoints are meant to be read.
    fn fp8_tensor(
        &self,
        vb: &VarBuilder<'static>,
        name: &str,
        shape: &[usize],
        scale_name: &str,
        block: (usize, usize),
    ) -> Result<Tensor> {
        let [rows, cols] = shape else {
            return Err(config_err(
                self.path(),
                format!("{scale_name} belongs to {name}, which is not a matrix ({shape:?})"),
            ));
        };
        let (rows, cols) = (*rows, *cols);
        let w = vb
            .get_with_hints_dtype(shape, name, Default::default(), DType::F32)
            .map_err(|e| shape_or_candle(name, shape, e))?;
        let want = [rows.div_ceil(block.0), cols.div_ceil(block.1)];
        let scale = vb
            .get_with_hints_dtype(&want[..], scale_name, Default::default(), DType::F32)
            .map_err(|e| shape_or_candle(scale_name, &want, e))?
            .to_vec2::<f32>()?;
        let mut data = w.flatten_all()?.to_vec1::<f32>()?;
        for (i, row) in data.chunks_exact_mut(cols).enumerate() {
            let srow = &scale[i / block.0];
            for (j, x) in row.iter_mut().enumerate() {
                *x *= srow[j / block.1];
            }
        }
        Ok(Tensor::from_vec(data, (rows, cols), vb.device())?.to_dtype(vb.dtype())?)
    }

    /// Expert `e`'s matrix `(out, in)` of a MoE layer: `{prefix}.{e}.{proj}.weight` in a
    /// Hugging Face checkpoint, or slice `e` of the stacked `(experts, out, in)` GGUF tensor
    /// (`ffn_gate_exps` ...), still read in place from the memory map.
    pub fn expert_matmul(
        &self,
        prefix: &str,
        e: usize,
        n_experts: usize,
        proj: &str,
        (out_dim, in_dim): (usize, usize),
    ) -> Result<Matmul> {
        let hf_name = format!("{prefix}.{e}.{proj}.weight");
        let Self::Gguf {
            file,
            device,
            kernels,
        } = self
        else {
            return self.matmul(&hf_name, out_dim, in_dim);
        };
        let name = gguf_name(&hf_name);
        let info = file.tensor_info(&name).map_err(|_| self.missing(&name))?;
        if info.shape() != [n_experts, out_dim, in_dim] {
            return Err(ModelError::Shape {
                name,
                expected: vec![n_experts, out_dim, in_dim],
                found: info.shape(),
            });
        }
        let data = file.tensor_data(info)?;
        let per = data.len() / n_experts;
        let bytes = &data[e * per..(e + 1) * per];
        match (kernel_type(info.ggml_type), kernels) {
            (Some(ty), Some(pool)) if device.is_cpu() => {
                QMatrix::new(ty, bytes, out_dim, in_dim)
                    .map_err(|err| config_err(file.path(), format!("tensor {name:?}: {err}")))?;
                Ok(Matmul::Quantized(QuantMatrix {
                    file: file.clone(),
                    info: info.clone(),
                    offset: e * per,
                    len: per,
                    ty,
                    rows: out_dim,
                    cols: in_dim,
                    pool: pool.clone(),
                }))
            }
            _ => {
                let dtype = ggml_dtype(info.ggml_type)?;
                let storage =
                    QStorage::from_data(std::borrow::Cow::Borrowed(bytes), device, dtype)?;
                Ok(Matmul::Candle(QMatMul::from_qtensor(QTensor::new(
                    storage,
                    (out_dim, in_dim),
                )?)?))
            }
        }
    }

    /// A weight matrix `(out, in)` for `x @ W^T`, kept quantized when the file is.
    pub fn matmul(&self, hf_name: &str, out_dim: usize, in_dim: usize) -> Result<Matmul> {
        match self {
            Self::Gguf {
                file,
                device,
                kernels: Some(pool),
            } if device.is_cpu() => {
                let name = gguf_name(hf_name);
                let info = file.tensor_info(&name).map_err(|_| self.missing(&name))?;
                if info.shape() != [out_dim, in_dim] {
                    return Err(ModelError::Shape {
                        name,
                        expected: vec![out_dim, in_dim],
                        found: info.shape(),
                    });
                }
                match kernel_type(info.ggml_type) {
                    Some(ty) => {
                        // Checks block alignment and byte length once, at load.
                        QMatrix::new(ty, file.tensor_data(info)?, out_dim, in_dim).map_err(
                            |e| config_err(file.path(), format!("tensor {name:?}: {e}")),
                        )?;
                        Ok(Matmul::Quantized(QuantMatrix {
                            file: file.clone(),
                            info: info.clone(),
                            offset: 0,
                            len: info.n_bytes as usize,
                            ty,
                            rows: out_dim,
                            cols: in_dim,
                            pool: pool.clone(),
                        }))
                    }
                    None => Ok(Matmul::Candle(QMatMul::from_qtensor(
                        self.qtensor(hf_name, &[out_dim, in_dim])?,
                    )?)),
                }
            }
            Self::Gguf { .. } => Ok(Matmul::Candle(QMatMul::from_qtensor(
                self.qtensor(hf_name, &[out_dim, in_dim])?,
            )?)),
            Self::Safetensors { .. } => Ok(Matmul::Candle(QMatMul::Tensor(
                self.tensor(hf_name, &[out_dim, in_dim])?,
            ))),
        }
    }

    /// An embedding table `(V, hidden)`.
    pub fn embedding(&self, hf_name: &str, vocab: usize, hidden: usize) -> Result<Embedding> {
        match self {
            Self::Gguf { file, .. } => {
                let name = gguf_name(hf_name);
                let info = file.tensor_info(&name).map_err(|_| self.missing(&name))?;
                if info.shape() != [vocab, hidden] {
                    return Err(ModelError::Shape {
                        name,
                        expected: vec![vocab, hidden],
                        found: info.shape(),
                    });
                }
                file.tensor_data(info)?;
                Ok(Embedding::Quantized {
                    file: file.clone(),
                    device: self.device().clone(),
                    name,
                    codec: RowCodec::of(info.ggml_type)?,
                    vocab,
                    hidden,
                })
            }
            Self::Safetensors { .. } => {
                Ok(Embedding::Dense(self.tensor(hf_name, &[vocab, hidden])?))
            }
        }
    }
}

fn shape_or_candle(name: &str, expected: &[usize], e: candle_core::Error) -> ModelError {
    match e {
        candle_core::Error::UnexpectedShape { got, .. } => ModelError::Shape {
            name: name.to_string(),
            expected: expected.to_vec(),
            found: got.dims().to_vec(),
        },
        other => ModelError::Candle(other),
    }
}

/// How rows of a quantized table are decoded: by candle (the types it knows) or by Seek's
/// kernels (the I-quants).
#[derive(Clone, Copy, Debug)]
pub enum RowCodec {
    /// candle's ggml decoder.
    Candle(GgmlDType),
    /// `seek_kernels::dequantize_row`.
    Kernel(QType),
}

impl RowCodec {
    fn of(t: GgmlType) -> Result<Self> {
        // candle decodes what it knows; the I-quants are the kernels' alone.
        match (ggml_dtype(t), kernel_type(t)) {
            (Ok(d), _) => Ok(Self::Candle(d)),
            (Err(_), Some(q)) => Ok(Self::Kernel(q)),
            (Err(e), None) => Err(e),
        }
    }

    fn row_bytes(self, cols: usize) -> usize {
        match self {
            Self::Candle(d) => cols / d.block_size() * d.type_size(),
            Self::Kernel(q) => q.row_bytes(cols),
        }
    }

    /// `rows x cols` values from `raw`, as an f32 tensor on the CPU.
    fn decode(self, raw: &[u8], rows: usize, cols: usize) -> Result<Tensor> {
        let device = Device::Cpu;
        match self {
            Self::Candle(d) => Ok(QTensor::new(
                QStorage::from_data(std::borrow::Cow::Borrowed(raw), &device, d)?,
                (rows, cols),
            )?
            .dequantize(&device)?),
            Self::Kernel(q) => {
                let mut out = vec![0f32; rows * cols];
                for (r, o) in raw
                    .chunks_exact(q.row_bytes(cols))
                    .zip(out.chunks_exact_mut(cols))
                {
                    seek_kernels::dequantize_row(q, r, o);
                }
                Ok(Tensor::from_vec(out, (rows, cols), &device)?)
            }
        }
    }
}

/// Token embeddings. A quantized table stays in the memory map and only the rows a
/// forward needs are dequantized: a 150k-token vocabulary costs nothing until used.
#[derive(Clone)]
pub enum Embedding {
    /// A dense `(V, hidden)` table.
    Dense(Tensor),
    /// Rows of a GGUF tensor, dequantized on demand.
    Quantized {
        /// The file that holds the table.
        file: Arc<GgufFile>,
        /// Where the looked-up rows go.
        device: Device,
        /// The GGUF tensor name.
        name: String,
        /// Its encoding.
        codec: RowCodec,
        /// Rows.
        vocab: usize,
        /// Columns.
        hidden: usize,
    },
}

impl Embedding {
    /// `(V, hidden)`.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Self::Dense(t) => {
                let d = t.dims();
                (d[0], d[1])
            }
            Self::Quantized { vocab, hidden, .. } => (*vocab, *hidden),
        }
    }

    /// Looks up `ids: (B, T)` and returns `(B, T, hidden)`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let flat: Vec<u32> = ids.flatten_all()?.to_vec1()?;
        match self {
            Self::Dense(table) => {
                let vocab = table.dim(0)?;
                check_ids(&flat, vocab)?;
                let idx = Tensor::new(flat.as_slice(), table.device())?;
                Ok(table.index_select(&idx, 0)?.reshape((b, t, ()))?)
            }
            Self::Quantized {
                file,
                device: out_device,
                name,
                codec,
                vocab,
                hidden,
            } => {
                check_ids(&flat, *vocab)?;
                let info = file.tensor_info(name)?;
                let data = file.tensor_data(info)?;
                let row_bytes = codec.row_bytes(*hidden);
                let mut rows = Vec::with_capacity(flat.len());
                for &id in &flat {
                    let start = id as usize * row_bytes;
                    let raw = &data[start..start + row_bytes];
                    rows.push(codec.decode(raw, 1, *hidden)?);
                }
                Ok(Tensor::cat(&rows, 0)?
                    .reshape((b, t, *hidden))?
                    .to_device(out_device)?)
            }
        }
    }
}

fn check_ids(ids: &[u32], vocab: usize) -> Result<()> {
    match ids.iter().find(|&&id| id as usize >= vocab) {
        Some(id) => Err(ModelError::Input(format!(
            "token id {id} is outside the vocabulary (0..{vocab}); the ids come from another tokenizer"
        ))),
        None => Ok(()),
    }
}

/// A weight matrix `(out, in)` that computes `x @ W^T`.
#[derive(Clone)]
pub enum Matmul {
    /// Dense weights, or an encoding Seek's kernels do not cover: candle computes it.
    Candle(QMatMul),
    /// A quantized GGUF matrix computed in place from the memory map by `seek-kernels`.
    Quantized(QuantMatrix),
}

impl Matmul {
    /// The matrix when Seek's kernels compute it from the memory map.
    pub(crate) fn quantized(&self) -> Option<&QuantMatrix> {
        match self {
            Self::Quantized(q) => Some(q),
            Self::Candle(_) => None,
        }
    }

    /// `x: (..., in)` -> `(..., out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Candle(m) => Ok(m.forward(x)?),
            Self::Quantized(q) => q.forward(x),
        }
    }
}

/// A quantized GGUF weight matrix, never copied out of the memory map.
#[derive(Clone)]
pub struct QuantMatrix {
    file: Arc<GgufFile>,
    info: TensorInfo,
    /// Where this matrix's bytes start in the tensor's data (an expert of a stacked tensor).
    offset: usize,
    /// How many bytes it holds.
    len: usize,
    ty: QType,
    rows: usize,
    cols: usize,
    pool: Arc<seek_kernels::ThreadPool>,
}

thread_local! {
    /// Quantized activations and repacked tiles, reused across calls so decode does not allocate.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::new());
}

impl QuantMatrix {
    /// `out = x · Wᵀ` on plain rows: `x` is `(m, in)`, `out` is `(m, out)` (the fused CPU decode
    /// path, which keeps its activations in reusable buffers instead of tensors).
    pub(crate) fn forward_slice(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        let w = QMatrix::new(self.ty, self.bytes()?, self.rows, self.cols)
            .map_err(|e| ModelError::Input(format!("tensor {:?}: {e}", self.info.name)))?;
        SCRATCH.with(|s| seek_kernels::matmul(&w, x, m, out, &mut s.borrow_mut(), &self.pool));
        Ok(())
    }

    fn bytes(&self) -> Result<&[u8]> {
        Ok(&self.file.tensor_data(&self.info)?[self.offset..self.offset + self.len])
    }

    /// `outs[i] = x · Wᵢᵀ` for matrices of the same width on the rows `x: (m, in)`: one
    /// dispatch of the kernels' pool for all of them when `m = 1` (decode), so a layer's
    /// q/k/v or gate/up projections wake the threads once.
    pub(crate) fn forward_many(
        ms: &[&QuantMatrix],
        x: &[f32],
        m: usize,
        outs: &mut [&mut [f32]],
    ) -> Result<()> {
        if m != 1 || ms.len() < 2 {
            for (q, o) in ms.iter().zip(outs.iter_mut()) {
                q.forward_slice(x, m, o)?;
            }
            return Ok(());
        }
        let ws = ms
            .iter()
            .map(|q| {
                QMatrix::new(q.ty, q.bytes()?, q.rows, q.cols)
                    .map_err(|e| ModelError::Input(format!("tensor {:?}: {e}", q.info.name)))
            })
            .collect::<Result<Vec<_>>>()?;
        SCRATCH.with(|s| seek_kernels::matmul_many(&ws, x, outs, &mut s.borrow_mut(), &ms[0].pool));
        Ok(())
    }

    /// `(out, in)`.
    pub(crate) fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Rows `r0..r0 + n` dequantized to f32, `(n, in)` row-major.
    pub(crate) fn dequantize_rows(&self, r0: usize, n: usize) -> Result<Vec<f32>> {
        let row_bytes = self.ty.row_bytes(self.cols);
        let bytes = self.bytes()?;
        let mut out = vec![0f32; n * self.cols];
        for (i, o) in out.chunks_exact_mut(self.cols).enumerate() {
            let start = (r0 + i) * row_bytes;
            seek_kernels::dequantize_row(self.ty, &bytes[start..start + row_bytes], o);
        }
        Ok(out)
    }

    /// The whole matrix dequantized, `(out, in)` on the CPU.
    pub(crate) fn dequantize(&self) -> Result<Tensor> {
        let w = self.dequantize_rows(0, self.rows)?;
        Ok(Tensor::from_vec(w, (self.rows, self.cols), &Device::Cpu)?)
    }

    /// The threads its products run on.
    pub(crate) fn pool(&self) -> &seek_kernels::ThreadPool {
        &self.pool
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let m = x.elem_count() / self.cols;
        // (..., in) -> (m, in), f32, contiguous
        let xs: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let w = QMatrix::new(self.ty, self.bytes()?, self.rows, self.cols)
            .map_err(|e| ModelError::Input(format!("tensor {:?}: {e}", self.info.name)))?;
        let mut out = vec![0f32; m * self.rows];
        SCRATCH
            .with(|s| seek_kernels::matmul(&w, &xs, m, &mut out, &mut s.borrow_mut(), &self.pool));
        let mut out_dims = dims;
        *out_dims.last_mut().expect("x has a last dimension") = self.rows;
        Ok(Tensor::from_vec(out, out_dims, x.device())?)
    }
}
