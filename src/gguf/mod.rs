//! GGUF, the file format of llama.cpp (specs/llamacpp.md §4): a header of typed key/values and
//! tensor descriptions, then the tensors' bytes, each aligned. tunelab reads and writes it itself
//! so that every value type (nested arrays included) survives a round trip, files are written
//! atomically in llama.cpp's strict layout, and lengths read from a file are checked against the
//! file before anything is allocated.
//!
//! - [`types`]: values, the ggml tensor types and their block sizes.
//! - [`read`]: [`read::GgufReader`], the header parsed and checked; tensor bytes read on demand.
//! - [`write`]: [`write::GgufWriter`], metadata and tensors in order, padded, written atomically.
//! - [`export`]: a model (plus a merged LoRA adapter) as a llama GGUF that llama.cpp loads.
//! - [`lora_export`]: a LoRA adapter as llama.cpp's adapter GGUF (`--lora`).
//! - [`tokenizer_keys`]: a Hugging Face BPE tokenizer as GGUF `tokenizer.*` keys.
//! - [`requantize`]: a llama GGUF quantized into another, tensor by tensor (`tunelab quantize`).
//! - [`imatrix_file`]: importance matrices (llama-imatrix's GGUF and legacy `.dat` files) and the
//!   per-column weights llama-quantize takes from them.

pub mod export;
pub mod imatrix_file;
pub mod lora_export;
pub mod read;
pub mod requantize;
pub mod tokenizer_keys;
pub mod types;
pub mod write;

pub use read::GgufReader;
pub use types::{GgmlType, TensorInfo, Value};
pub use write::GgufWriter;

/// `"GGUF"` as the first four bytes.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// The version tunelab writes (and the only one llama.cpp writes today).
pub const VERSION: u32 = 3;
/// The alignment of the data section and of every tensor unless `general.alignment` says otherwise.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_NAME`: tensor names are shorter than this.
pub const MAX_NAME: usize = 64;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;
