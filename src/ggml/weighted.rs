//! Quantizing a matrix to any type tunelab writes, with or without an importance matrix, byte for
//! byte as llama-quantize (`ggml_quantize_chunk` in `ggml.c`); and reading the bytes back.
//!
//! The importance of a tensor is one non-negative value per column (per input feature): the mean
//! square activation that feature had while a calibration text ran through the model, as
//! llama-imatrix measures it (its GGUF stores `<tensor>.in_sum2` and `<tensor>.counts`;
//! llama-quantize hands ggml `in_sum2 / counts`). Quantization errors in important columns cost
//! more, so ggml's imatrix paths fit every block by weighted least squares instead of the
//! reference quantizers' rules:
//!
//! | type | without importance | with importance `qw` (σ²: the row's mean square) |
//! |---|---|---|
//! | F32, F16, BF16, Q8_0 | conversion, `quantize_row_q8_0_ref` | the same: ggml ignores the importance |
//! | Q4_0, Q5_0 | d = max/−8, max/−16 | [`make_qx_quants_weighted`], weights `qw·sqrt(σ² + x²)` |
//! | Q4_1, Q5_1 | d = (max − min)/15, /31 | [`qkx3`] (scale and min by weighted least squares), same weights |
//! | Q2_K … Q6_K | the reference searches | [`super::weighted_formats`] |
//!
//! Without importance, [`quantize_weighted`] runs the reference quantizers
//! ([`super::quantize`], [`super::kquants`]), so its bytes are exactly theirs.
//!
//! All-equal importance is not the same as none: ggml still takes the weighted path, whose
//! searches differ from the reference ones (Q4_0 searches 19 scales where the reference takes
//! max/−8; Q6_K weights by the constant instead of x²). A constant factor cancels in every
//! comparison the searches make, exactly so for a power of two, so importance c everywhere gives
//! the bytes of importance 1 (tested below).
//!
//! [`make_qx_quants_weighted`]: super::kquant_search::make_qx_quants_weighted
//! [`qkx3`]: super::kquant_search::qkx3

use half::{bf16, f16};
use rayon::prelude::*;

use super::blocks::{dequantize_row, Format, BLOCK};
use super::kquants::{k_quant, QK_K};
use super::quantize::quantize_row;
use super::weighted_formats;
use crate::error::{Error, Result};

/// The types [`quantize_weighted`] and [`dequantize`] know, by their ggml names.
pub const WRITABLE_TYPES: [&str; 13] = [
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
    "Q6_K",
];

/// How a type stores a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// One value per weight: bytes per value.
    Float(usize),
    /// Blocks of 32 weights.
    Block(Format),
    /// Super-blocks of 256 weights: bytes per super-block.
    KQuant(usize),
}

/// The type called `name` (ggml's spelling, any case), as its `WRITABLE_TYPES` entry and kind.
fn kind_of(name: &str) -> Result<(&'static str, Kind)> {
    let canonical = WRITABLE_TYPES
        .into_iter()
        .find(|t| t.eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            Error::msg(format!(
                "cannot quantize to {name:?}: tunelab writes {}",
                WRITABLE_TYPES.join(", ")
            ))
        })?;
    let kind = match canonical {
        "F32" => Kind::Float(4),
        "F16" | "BF16" => Kind::Float(2),
        "Q2_K" => Kind::KQuant(84),
        "Q3_K" => Kind::KQuant(110),
        "Q4_K" => Kind::KQuant(144),
        "Q5_K" => Kind::KQuant(176),
        "Q6_K" => Kind::KQuant(210),
        other => Kind::Block(Format::of_name(other).expect("a 32-weight format")),
    };
    Ok((canonical, kind))
}

/// Bytes of one row of `row_len` weights, or why such rows cannot be stored.
fn row_bytes(name: &str, kind: Kind, row_len: usize) -> Result<usize> {
    let (block, bytes) = match kind {
        Kind::Float(bytes) => (1, bytes),
        Kind::Block(format) => (BLOCK, format.block_bytes()),
        Kind::KQuant(bytes) => (QK_K, bytes),
    };
    if row_len == 0 || !row_len.is_multiple_of(block) {
        return Err(Error::msg(format!(
            "cannot store rows of {row_len} weights as {name}: its blocks hold {block}; the row length must be a positive multiple of {block}"
        )));
    }
    Ok(row_len / block * bytes)
}

/// `values` (rows of `row_len`) quantized to the type `type_name` as llama-quantize does it:
/// with `importance` (one value per column, as llama-quantize hands them to
/// `ggml_quantize_chunk`) through ggml's imatrix paths, without it through the reference
/// quantizers (today's bytes). Rows are quantized in parallel.
pub fn quantize_weighted(
    type_name: &str,
    values: &[f32],
    row_len: usize,
    importance: Option<&[f32]>,
) -> Result<Vec<u8>> {
    let (name, kind) = kind_of(type_name)?;
    let row_size = row_bytes(name, kind, row_len)?;
    if !values.len().is_multiple_of(row_len) {
        return Err(Error::msg(format!(
            "cannot quantize {} values as rows of {row_len}: the count must be a multiple of the row length",
            values.len()
        )));
    }
    if let Some(qw) = importance {
        check_importance(qw, row_len)?;
    }
    let mut out = vec![0u8; values.len() / row_len * row_size];
    out.par_chunks_mut(row_size)
        .zip(values.par_chunks(row_len))
        .try_for_each_init(
            || Vec::with_capacity(row_size),
            |buf, (dst, row)| {
                buf.clear();
                quantize_row_into(name, kind, row, importance, buf)?;
                dst.copy_from_slice(buf);
                Ok::<(), Error>(())
            },
        )?;
    Ok(out)
}

/// Importance must have one finite value per column (llama-quantize refuses a non-finite one).
fn check_importance(qw: &[f32], row_len: usize) -> Result<()> {
    if qw.len() != row_len {
        return Err(Error::msg(format!(
            "importance has {} values but the rows have {row_len} columns: expected {row_len}, one per column",
            qw.len()
        )));
    }
    if let Some(col) = qw.iter().position(|v| !v.is_finite()) {
        return Err(Error::msg(format!(
            "importance of column {col} is {}: importance values must be finite (recompute the imatrix)",
            qw[col]
        )));
    }
    Ok(())
}

/// One row appended to `out` (exactly its row size).
fn quantize_row_into(
    name: &str,
    kind: Kind,
    row: &[f32],
    importance: Option<&[f32]>,
    out: &mut Vec<u8>,
) -> Result<()> {
    match (kind, importance) {
        (Kind::Float(_), _) => match name {
            "F32" => out.extend(row.iter().flat_map(|v| v.to_le_bytes())),
            "F16" => out.extend(
                row.iter()
                    .flat_map(|v| f16::from_f32(*v).to_bits().to_le_bytes()),
            ),
            _ => out.extend(
                row.iter()
                    .flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes()),
            ),
        },
        (Kind::Block(format), None) | (Kind::Block(format @ Format::Q8_0), Some(_)) => {
            out.extend_from_slice(&quantize_row(format, row)?)
        }
        (Kind::Block(format), Some(qw)) => weighted_formats::blocks_32(format, row, qw, out),
        (Kind::KQuant(_), None) => {
            let (quantize, _) = k_quant(name).expect("a K-quant name");
            out.extend_from_slice(&quantize(row)?)
        }
        (Kind::KQuant(_), Some(qw)) => match name {
            "Q2_K" => weighted_formats::q2_k(row, qw, out),
            "Q3_K" => weighted_formats::q3_k(row, qw, out),
            "Q4_K" => weighted_formats::q4_k(row, qw, out),
            "Q5_K" => weighted_formats::q5_k(row, qw, out),
            _ => weighted_formats::q6_k(row, qw, out),
        },
    }
    Ok(())
}

/// The weights of `bytes` (rows of `row_len` weights stored as `type_name`) back as f32.
pub fn dequantize(type_name: &str, bytes: &[u8], row_len: usize) -> Result<Vec<f32>> {
    let (name, kind) = kind_of(type_name)?;
    let row_size = row_bytes(name, kind, row_len)?;
    if !bytes.len().is_multiple_of(row_size) {
        return Err(Error::msg(format!(
            "cannot read {} bytes as {name} rows of {row_len} weights: each row takes {row_size} bytes",
            bytes.len()
        )));
    }
    // Blocks never straddle rows, so the whole buffer decodes as one run of blocks.
    Ok(match kind {
        Kind::Float(_) => match name {
            "F32" => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            "F16" => bytes
                .chunks_exact(2)
                .map(|b| f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
            _ => bytes
                .chunks_exact(2)
                .map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
        },
        Kind::Block(format) => dequantize_row(format, bytes),
        Kind::KQuant(_) => (k_quant(name).expect("a K-quant name").1)(bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ggml::quantize::quantize;

    /// Student-t-like values (a ratio of uniforms, heavy-tailed as real weights are) from a fixed
    /// xorshift, so every run sees the same matrix.
    fn matrix(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        let mut uniform = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        };
        (0..n)
            .map(|_| 0.05 * (uniform() - 0.5) / (uniform() + 0.05))
            .collect()
    }

    /// Importance spanning six orders of magnitude, as real columns do.
    fn importance(n: usize) -> Vec<f32> {
        matrix(n, 7)
            .iter()
            .map(|v| 10f32.powf(60.0 * v.abs().min(0.1) - 3.0))
            .collect()
    }

    const IMATRIX_TYPES: [&str; 9] = [
        "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    ];

    #[test]
    fn without_importance_the_bytes_are_the_reference_quantizers() {
        let x = matrix(4 * 512, 1);
        for name in WRITABLE_TYPES {
            let want: Vec<u8> = match name {
                "F32" => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
                "F16" => x
                    .iter()
                    .flat_map(|v| f16::from_f32(*v).to_bits().to_le_bytes())
                    .collect(),
                "BF16" => x
                    .iter()
                    .flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes())
                    .collect(),
                _ => match k_quant(name) {
                    Some((row, _)) => x.chunks(512).flat_map(|r| row(r).unwrap()).collect(),
                    None => quantize(Format::of_name(name).unwrap(), &x, 512).unwrap(),
                },
            };
            assert_eq!(
                quantize_weighted(name, &x, 512, None).unwrap(),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn q8_0_and_floats_ignore_importance_as_ggml_does() {
        let (x, qw) = (matrix(2 * 256, 2), importance(256));
        for name in ["F32", "F16", "BF16", "Q8_0"] {
            let plain = quantize_weighted(name, &x, 256, None).unwrap();
            assert_eq!(
                quantize_weighted(name, &x, 256, Some(&qw)).unwrap(),
                plain,
                "{name}"
            );
        }
    }

    /// The module's note on all-equal importance: a power-of-two factor changes no byte, and
    /// equal importance is still not the reference quantizers' output.
    #[test]
    fn equal_importance_is_one_weighted_answer_but_not_the_reference() {
        let x = matrix(8 * 512, 3);
        for name in IMATRIX_TYPES {
            let ones = quantize_weighted(name, &x, 512, Some(&[1.0; 512])).unwrap();
            let eights = quantize_weighted(name, &x, 512, Some(&[8.0; 512])).unwrap();
            assert_eq!(ones, eights, "{name}");
            assert_ne!(
                ones,
                quantize_weighted(name, &x, 512, None).unwrap(),
                "{name}"
            );
        }
    }

    /// What the importance is for: the error weighted by it, Σ qw·(x − y)², comes out below the
    /// reference quantizers' in every format.
    #[test]
    fn importance_lowers_the_error_it_weights() {
        let (x, qw) = (matrix(16 * 512, 4), importance(512));
        let weighted_error = |y: &[f32]| -> f64 {
            x.iter()
                .zip(y)
                .enumerate()
                .map(|(i, (a, b))| qw[i % 512] as f64 * ((a - b) as f64).powi(2))
                .sum()
        };
        for name in IMATRIX_TYPES {
            let back = |imp| dequantize(name, &quantize_weighted(name, &x, 512, imp).unwrap(), 512);
            let (with, without) = (back(Some(&qw)).unwrap(), back(None).unwrap());
            let (e_with, e_without) = (weighted_error(&with), weighted_error(&without));
            assert!(
                e_with < e_without,
                "{name}: {e_with} with importance, {e_without} without"
            );
        }
    }

    #[test]
    fn dequantize_reads_every_type_back() {
        let x = matrix(3 * 256, 5);
        for name in WRITABLE_TYPES {
            let y =
                dequantize(name, &quantize_weighted(name, &x, 256, None).unwrap(), 256).unwrap();
            assert_eq!(y.len(), x.len(), "{name}");
            let worst = x
                .iter()
                .zip(&y)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(worst <= 0.4 * amax, "{name}: worst error {worst} of {amax}");
            if name == "F32" {
                assert_eq!(y, x);
            }
        }
        let err = dequantize("Q4_K", &[0; 100], 256).unwrap_err().to_string();
        assert!(err.contains("144 bytes"), "{err}");
    }

    #[test]
    fn errors_name_what_was_expected() {
        let x = matrix(512, 6);
        let msg = |r: Result<Vec<u8>>| r.unwrap_err().to_string();
        let e = msg(quantize_weighted("Q4_K", &x, 512, Some(&[1.0; 500])));
        assert!(e.contains("500") && e.contains("expected 512"), "{e}");
        let e = msg(quantize_weighted("Q7_K", &x, 512, None));
        assert!(
            e.contains("Q7_K") && e.contains("Q4_K") && e.contains("BF16"),
            "{e}"
        );
        let e = msg(quantize_weighted("Q4_K", &x[..384], 384, None));
        assert!(e.contains("384") && e.contains("multiple of 256"), "{e}");
        let e = msg(quantize_weighted("Q4_0", &x[..500], 64, None));
        assert!(e.contains("500") && e.contains("64"), "{e}");
        let mut qw = vec![1.0; 512];
        qw[17] = f32::NAN;
        let e = msg(quantize_weighted("Q6_K", &x, 512, Some(&qw)));
        assert!(e.contains("column 17") && e.contains("finite"), "{e}");
        // Type names are ggml's, in any case.
        assert!(quantize_weighted("q4_k", &x, 512, None).is_ok());
    }
}
