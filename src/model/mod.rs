//! Models: loading (Hugging Face folder, GGUF file, the `tiny` preset), the Llama forward pass,
//! tokenizers, and perplexity.
//!
//! A [`Model`] is cheap to clone (its parts sit behind one `Arc`) and immutable; generation keeps
//! its own KV cache.

pub mod bench;
pub mod config;
pub mod decode_batch;
pub mod flash_attention;
pub mod frozen;
pub mod fused;
#[cfg(feature = "cuda")]
pub mod fused_cuda;
pub mod gemm_bf16;
pub mod gguf;
pub mod kv_cache;
pub mod linear;
pub mod llama;
pub mod low_rank_add;
pub mod matvec_f32;
pub mod parity;
pub mod perplexity;
pub mod recompute;
pub mod rope;
pub mod save;
pub mod shapes;
pub mod shards;
pub mod spm;
pub mod tiny;
pub mod tokenizer;
pub mod vec_exp;
pub mod weights;

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};

pub use config::LlamaConfig;
pub use kv_cache::KvCache;
pub use llama::{Llama, Logits, Observer, Pass, Site};
pub use tokenizer::Tokenizer;

use crate::error::{Error, Result};

/// Options of `load_model`.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Compute dtype of dense weights: f32, bf16 or f16; None picks f32 on the CPU and bf16 on a
    /// GPU (the mixed precision LLaMA-Factory uses there: LoRA weights and optimizer stay f32).
    pub dtype: Option<DType>,
    /// GGUF only: keep the weights in their quantized blocks (for chat and serving).
    pub quantized: bool,
    /// Seed of the random weights of `tiny` and of `shape:` models.
    pub seed: u64,
    /// A slice of a `shape:` model: fewer blocks, a smaller vocabulary (same width).
    pub shape: shapes::ShapeOptions,
    /// bf16 on a CPU with AVX512-BF16: compute as PyTorch's bf16 autocast does (bf16 weights
    /// and products, f32 elsewhere; the default), or in bf16 throughout as a GPU does (false).
    pub autocast: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: "cpu".into(),
            dtype: None,
            quantized: false,
            seed: 0,
            shape: shapes::ShapeOptions::default(),
            autocast: true,
        }
    }
}

/// Everything about a loaded model.
#[derive(Debug, Clone)]
pub struct ModelParts {
    pub llama: Llama,
    pub tokenizer: Tokenizer,
    /// The model's own Jinja chat template, if it has one.
    pub chat_template: Option<String>,
    /// Where it came from: a path, or `tiny (seed N)`.
    pub source: String,
    /// `gguf`, `hf`, `tiny` or `shape`.
    pub format: &'static str,
    /// Weights kept in quantized blocks.
    pub quantized: bool,
    /// Token ids that end generation (eos and the like).
    pub stop_ids: Vec<u32>,
    /// Whether text starts with the bos token when tokenized for the model (GGUF
    /// `tokenizer.ggml.add_bos_token`, HF `add_bos_token`).
    pub add_bos: bool,
    /// The bos and eos token strings (for templates).
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

/// A loaded model; clones share the weights.
#[derive(Debug, Clone)]
pub struct Model {
    inner: Arc<ModelParts>,
}

impl std::ops::Deref for Model {
    type Target = ModelParts;
    fn deref(&self) -> &ModelParts {
        &self.inner
    }
}

impl Model {
    /// Wrap loaded parts.
    pub fn new(parts: ModelParts) -> Self {
        Model {
            inner: Arc::new(parts),
        }
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.llama.config
    }

    /// Parameters of the network.
    pub fn num_params(&self) -> usize {
        self.llama.config.num_params()
    }

    /// A copy (sharing the weights) whose quantized layers round activations to 8 bits as
    /// llama.cpp's CPU kernels do ([`crate::ggml::act_round::InputRounding::ggml`]), so
    /// perplexity and KL figures compare with llama.cpp's; dense layers are unchanged.
    pub fn with_ggml_activations(&self) -> Model {
        let ggml = Arc::new(crate::ggml::act_round::InputRounding::ggml());
        self.with_input_rounding(&|_| Some(ggml.clone()))
    }

    /// A copy (sharing the weights) whose every linear layer — each block projection and the
    /// output projection — rounds its input as `rounding` says for its [`Site`] (None: f32).
    pub fn with_input_rounding(
        &self,
        rounding: &dyn Fn(Site) -> Option<Arc<crate::ggml::act_round::InputRounding>>,
    ) -> Model {
        let mut llama = self.llama.clone();
        for (i, b) in llama.blocks.iter_mut().enumerate() {
            for t in crate::lora::Target::ALL {
                b.linear_mut(t).input_rounding = rounding(Site::Block(i, t));
            }
        }
        llama.lm_head.input_rounding = rounding(Site::Output);
        Model::new(ModelParts {
            llama,
            ..(*self.inner).clone()
        })
    }

    /// Whether `other` is this very model (a clone of it), not merely an equal one.
    pub fn is_same(&self, other: &Model) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// How this model's layers round their inputs, when they do (the first layer's rounding:
    /// its description and the outlier count all layers share).
    pub fn input_rounding(&self) -> Option<Arc<crate::ggml::act_round::InputRounding>> {
        self.llama
            .blocks
            .iter()
            .flat_map(|b| crate::lora::Target::ALL.map(|t| b.linear(t).input_rounding.clone()))
            .chain([self.llama.lm_head.input_rounding.clone()])
            .flatten()
            .next()
    }
}

impl std::fmt::Display for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.config();
        let weights = if self.quantized {
            "quantized".to_string()
        } else {
            parity::dtype_name(self.llama.weights_dtype())
        };
        write!(
            f,
            "Model {} ({}, {:.1} M params, {} layers, hidden {}, heads {}/{}, vocab {}), {weights} on {}, from {}",
            c.architecture,
            self.format,
            self.num_params() as f64 / 1e6,
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.vocab_size,
            device_description(&self.llama.device),
            self.source
        )
    }
}

/// A device by name: `cpu`, `cuda`, `cuda:N`.
pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if candle_core::utils::cuda_is_available() {
            cuda_device(0)?
        } else {
            Device::Cpu
        }),
        other => {
            let ordinal = match other.strip_prefix("cuda") {
                // A GPU rank's own GPU (LOCAL_RANK's), else the first.
                Some("") => crate::collective::gpu().unwrap_or(0),
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| {
                        Error::config(
                            "device",
                            format!(
                                "\"{other}\" is not a device; use \"cpu\", \"cuda\" or \"cuda:N\""
                            ),
                        )
                    })?,
                None => {
                    return Err(Error::config(
                        "device",
                        format!("\"{other}\" is not a device; use \"cpu\", \"cuda\" or \"cuda:N\""),
                    ))
                }
            };
            if !cfg!(feature = "cuda") {
                return Err(Error::config("device", format!("\"{other}\": this tunelab was built without CUDA; build it with `cargo build --release --features cuda` (see docs/gpu.md)")));
            }
            cuda_device(ordinal)
        }
    }
}

/// GPU `ordinal`, opened once per process: every model on it shares one stream, one cuBLAS
/// handle and the kernels compiled for it (each `Device::new_cuda` would open all of these anew,
/// and tensors of two such devices cannot meet in one operation).
pub fn cuda_device(ordinal: usize) -> Result<Device> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static OPENED: OnceLock<Mutex<HashMap<usize, Device>>> = OnceLock::new();
    let mut opened = OPENED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(d) = opened.get(&ordinal) {
        return Ok(d.clone());
    }
    let d = Device::new_cuda(ordinal)?;
    opened.insert(ordinal, d.clone());
    Ok(d)
}

/// How a device prints.
pub fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => format!("cuda:{}", d.location().ordinal()),
        Device::Metal(_) => "metal".into(),
    }
}

/// A device with its card where it has one: `cuda:0 (NVIDIA H100 80GB HBM3, 79.2 GiB)`.
pub fn device_description(d: &Device) -> String {
    match gpu_card(d) {
        Some(card) => format!("{} ({card})", device_name(d)),
        None => device_name(d),
    }
}

#[cfg(feature = "cuda")]
fn gpu_card(d: &Device) -> Option<String> {
    let Device::Cuda(cuda) = d else { return None };
    let stream = cuda.cuda_stream();
    let context = stream.context();
    let name = context.name().ok()?;
    let (major, minor) = context.compute_capability().ok()?;
    let gib = context.total_mem().ok()? as f64 / (1u64 << 30) as f64;
    Some(format!("{name}, compute {major}.{minor}, {gib:.1} GiB"))
}

#[cfg(not(feature = "cuda"))]
fn gpu_card(_: &Device) -> Option<String> {
    None
}

/// The compute dtype `opts` asks for on `device`: f32 on the CPU and bf16 on a GPU unless set.
pub fn compute_dtype(opts: &LoadOptions, device: &Device) -> DType {
    opts.dtype.unwrap_or(if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    })
}

trait Ordinal {
    fn ordinal(&self) -> usize;
}

impl Ordinal for candle_core::DeviceLocation {
    fn ordinal(&self) -> usize {
        match self {
            candle_core::DeviceLocation::Cuda { gpu_id }
            | candle_core::DeviceLocation::Metal { gpu_id } => *gpu_id,
            candle_core::DeviceLocation::Cpu => 0,
        }
    }
}

/// Load `path_or_preset`: a Hugging Face folder, a `.gguf` file, `"tiny"`, or `"shape:NAME"` (a
/// real architecture's shape with random weights, [`shapes`]). bf16 on a CPU with
/// AVX512-BF16 computes as PyTorch's bf16 autocast does ([`Llama::autocast_bf16`]); a CPU without
/// the instructions computes in f32 instead and says so once (`autocast: false` keeps bf16
/// throughout, as a GPU computes, on any CPU).
pub fn load(path_or_preset: &str, opts: &LoadOptions) -> Result<Model> {
    // Only a bf16 request resolves the device here (opening a GPU twice would cost start-up).
    let autocast = opts.dtype == Some(DType::BF16) && opts.autocast;
    if autocast && device(&opts.device)?.is_cpu() {
        if !gemm_bf16::available() {
            static NOTE: std::sync::Once = std::sync::Once::new();
            NOTE.call_once(|| {
                eprintln!(
                    "note: dtype bf16: this CPU has no AVX512-BF16 instructions, so tunelab computes in f32 (faster here than bf16 without them)"
                )
            });
            let f32 = LoadOptions {
                dtype: Some(DType::F32),
                ..opts.clone()
            };
            return load_as_stored(path_or_preset, &f32);
        }
        let mut parts = (*load_as_stored(path_or_preset, opts)?).clone(); // nothing shares it yet
        parts.llama.autocast_bf16()?;
        return Ok(Model::new(parts));
    }
    load_as_stored(path_or_preset, opts)
}

/// [`load`] without the CPU's bf16 autocast.
fn load_as_stored(path_or_preset: &str, opts: &LoadOptions) -> Result<Model> {
    let device = device(&opts.device)?;
    let opts = &LoadOptions {
        dtype: Some(compute_dtype(opts, &device)),
        ..opts.clone()
    };
    if path_or_preset == "tiny" {
        let (llama, tokenizer) = tiny::build(opts.seed, compute_dtype(opts, &device), &device)?;
        let stop_ids = llama.config.eos_token_ids.clone();
        return Ok(Model::new(ModelParts {
            llama,
            tokenizer,
            chat_template: None,
            source: format!("tiny preset (seed {})", opts.seed),
            format: "tiny",
            quantized: false,
            stop_ids,
            add_bos: false,
            bos_token: None,
            eos_token: Some("<|im_end|>".into()),
        }));
    }
    if let Some(name) = path_or_preset.strip_prefix("shape:") {
        let cfg = shapes::shape(name)?;
        let (llama, tokenizer) = shapes::build(
            cfg,
            &opts.shape,
            opts.seed,
            compute_dtype(opts, &device),
            &device,
        )?;
        let stop_ids = llama.config.eos_token_ids.clone();
        return Ok(Model::new(ModelParts {
            llama,
            tokenizer,
            chat_template: None,
            source: format!("{path_or_preset} with random weights (seed {})", opts.seed),
            format: "shape",
            quantized: false,
            stop_ids,
            add_bos: false,
            bos_token: None,
            eos_token: Some("<|im_end|>".into()),
        }));
    }
    let path = Path::new(path_or_preset);
    if path.is_dir() {
        return weights::load_hf(path, opts, &device);
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        if !path.is_file() {
            return Err(Error::io_hint(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                "for SmolLM2 run scripts/fetch-smollm2.sh",
            ));
        }
        return weights::load_gguf(path, opts, &device);
    }
    Err(Error::msg(format!(
        "\"{path_or_preset}\" is not a model: give a Hugging Face folder (config.json, *.safetensors, tokenizer.json), a .gguf file, \"tiny\", or \"shape:llama-3-8b\" (random weights)"
    )))
}

/// Largest absolute difference between two tensors of one shape (for tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("tensors of one shape")
}
