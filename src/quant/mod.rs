//! Quantized weights: the ggml block formats and the kernels that use them.
//!
//! `blocks` holds a readable scalar reference per format (what a block means); `matvec` holds the
//! fused dequantize-and-dot used for generation, and `interleaved` its faster form for Q4_0, Q4_1
//! and Q8_0 (rows in groups of 16, activations rounded to 16 bits), both tested against the
//! reference. `quantize`
//! (32-weight formats), `kquants` and `kquants_low_bit` (256-weight K-quants, on the searches in
//! `kquant_search`) quantize as llama-quantize does; `mixture` picks each tensor's type for a
//! llama-quantize preset.

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
pub mod mixture;
pub mod plan;
pub mod plot;
pub mod quantize;
pub mod quantize_model;
pub mod report;
