//! Quantized weights: the ggml block formats and the kernels that use them.
//!
//! `blocks` holds a readable scalar reference per format (what a block means); `matvec` holds the
//! fast fused dequantize-and-dot used for generation, tested against the reference.

pub mod blocks;
pub mod kquants;
pub mod matvec;
#[cfg(target_arch = "x86_64")]
mod matvec_avx2;
#[cfg(target_arch = "x86_64")]
mod matvec_avx512;
pub mod mixture;
pub mod quantize;
