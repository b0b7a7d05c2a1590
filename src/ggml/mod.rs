//! ggml's block formats, below `model/`: what a quantized block means, how llama-quantize fills it,
//! and the kernels that compute with it. Imports nothing above the core.
//!
//! `blocks` holds a readable scalar reference per format (what a block means); `matvec` holds the
//! fused dequantize-and-dot used for generation, and `interleaved` its faster form for Q4_0, Q4_1
//! and Q8_0 (rows in groups of 16, activations rounded to 16 bits), both tested against the
//! reference; `ggml_matmul` (on `ggml_dot32`) multiplies many rows as ggml's CPU backend does.
//! `quantize` (32-weight formats), `kquants` and `kquants_low_bit` (256-weight K-quants, on the
//! searches in `kquant_search`) quantize as llama-quantize does; `weighted` (on
//! `weighted_formats`) is the one entry for every type tunelab writes, with or without an
//! importance matrix, as `llama-quantize --imatrix` quantizes. `act_round` rounds a layer's
//! input to a few bits (the lab's activation quantization; with 8-bit blocks, llama.cpp's own).

pub mod act_round;
pub mod blocks;
pub mod ggml_dot32;
pub mod ggml_matmul;
pub mod interleaved;
#[cfg(target_arch = "x86_64")]
mod interleaved_avx512;
pub mod kquant_search;
pub mod kquants;
pub mod kquants_low_bit;
pub mod matvec;
#[cfg(target_arch = "x86_64")]
mod matvec_avx2;
#[cfg(target_arch = "x86_64")]
mod matvec_avx512;
pub mod quantize;
pub mod weighted;
mod weighted_formats;
