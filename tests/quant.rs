//! The 32-element quantizers against gguf-py (byte-identical to llama-quantize for these formats):
//! every row of tests/fixtures/quant/vectors.json (made by make_vectors.py beside it) quantizes to
//! exactly the bytes gguf-py wrote, and so does candle's own quantizer. The K-quants against
//! llama-quantize itself (every K-quant, Q2_K to Q6_K, byte for byte, and dequantized within a
//! bound per type): tests/fixtures/quant/kquant_vectors.json (make_kquant_vectors.py).

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use tunelab::ggml::blocks::Format;
use tunelab::ggml::kquants::k_quant;
use tunelab::ggml::quantize::quantize_row;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The fixture's input rows (little-endian f32, hex).
fn f32_rows(v: &serde_json::Value) -> Vec<Vec<f32>> {
    v["rows_f32_le_hex"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            hex(r.as_str().unwrap())
                .chunks(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
        .collect()
}

struct Vectors {
    rows: Vec<Vec<f32>>,
    expected: Vec<(Format, GgmlDType, Vec<Vec<u8>>)>,
}

fn vectors() -> Vectors {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/quant/vectors.json"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let rows = f32_rows(&v);
    let expected = [
        ("Q8_0", Format::Q8_0, GgmlDType::Q8_0),
        ("Q4_0", Format::Q4_0, GgmlDType::Q4_0),
        ("Q4_1", Format::Q4_1, GgmlDType::Q4_1),
        ("Q5_0", Format::Q5_0, GgmlDType::Q5_0),
        ("Q5_1", Format::Q5_1, GgmlDType::Q5_1),
    ]
    .into_iter()
    .map(|(name, format, dtype)| {
        let rows = v["quantized_hex"][name]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| hex(r.as_str().unwrap()))
            .collect();
        (format, dtype, rows)
    })
    .collect();
    Vectors { rows, expected }
}

#[test]
fn every_format_quantizes_byte_for_byte_as_gguf_py() {
    let v = vectors();
    assert_eq!(v.rows.len(), 13);
    for (format, _, expected) in &v.expected {
        for (i, (row, want)) in v.rows.iter().zip(expected).enumerate() {
            let got = quantize_row(*format, row).unwrap();
            assert_eq!(
                &got, want,
                "{format:?} row {i}: {got:02x?}\n   vs {want:02x?}"
            );
        }
    }
}

/// candle's `QTensor::quantize` gives the same bytes for these formats (so either may serve; the
/// reference above is the readable one).
#[test]
fn candles_quantizer_agrees_on_the_same_vectors() {
    let v = vectors();
    for (format, dtype, expected) in &v.expected {
        let mut differing = 0;
        for (row, want) in v.rows.iter().zip(expected) {
            let t = Tensor::from_slice(row, (1, row.len()), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&t, *dtype).unwrap();
            if q.data().unwrap().as_ref() != want.as_slice() {
                differing += 1;
            }
        }
        assert_eq!(
            differing,
            0,
            "candle {format:?}: {differing} of {} rows differ from gguf-py",
            v.rows.len()
        );
    }
}

/// The K-quant types, and the worst round-trip error each may make on a fixture row, as a
/// fraction of the row's largest magnitude (measured worst, 2026-11-29: Q2_K 0.298, Q3_K 0.150,
/// Q4_K 0.059, Q5_K 0.032, Q6_K 0.016; bounds about 10% above).
const K_QUANTS: [(&str, f32); 5] = [
    ("Q2_K", 0.33),
    ("Q3_K", 0.17),
    ("Q4_K", 0.065),
    ("Q5_K", 0.036),
    ("Q6_K", 0.018),
];

/// Rows whose largest magnitude is below this (the fixture's row 2, values near 1e-7) have
/// sub-block scales under f16's smallest subnormal (6e-8) once divided by the 4–6 bit scale
/// codes, so the stored scale is 0 or a few ulps: only "no worse than zeros" is asked of them.
const TINY: f32 = 1e-3;

fn kquant_vectors() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/quant/kquant_vectors.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn k_quants_quantize_byte_for_byte_as_llama_quantize() {
    let v = kquant_vectors();
    let rows = f32_rows(&v);
    assert_eq!(rows.len(), 16);
    for (name, _) in K_QUANTS {
        let (quantize, _) = k_quant(name).unwrap();
        let expected = v["quantized_hex"][name].as_array().unwrap();
        assert_eq!(expected.len(), rows.len(), "{name}");
        let mut wrong = Vec::new();
        for (i, (row, want)) in rows.iter().zip(expected).enumerate() {
            let (got, want) = (quantize(row).unwrap(), hex(want.as_str().unwrap()));
            if got != want {
                let at = got.iter().zip(&want).position(|(a, b)| a != b);
                wrong.push(format!("row {i} (first differing byte {at:?})"));
            }
        }
        assert!(
            wrong.is_empty(),
            "{name}: {} of {} rows differ from llama-quantize: {}",
            wrong.len(),
            rows.len(),
            wrong.join(", ")
        );
    }
}

/// Dequantizing llama-quantize's bytes gives back every fixture row within the format's bound.
#[test]
fn k_quants_dequantize_within_their_bounds() {
    let v = kquant_vectors();
    let rows = f32_rows(&v);
    for (name, bound) in K_QUANTS {
        let (_, dequantize) = k_quant(name).unwrap();
        let expected = v["quantized_hex"][name].as_array().unwrap();
        let mut worst = (0f32, 0);
        for (i, (row, q)) in rows.iter().zip(expected).enumerate() {
            let y = dequantize(&hex(q.as_str().unwrap()));
            assert_eq!(y.len(), row.len(), "{name} row {i}");
            let amax = row.iter().fold(0f32, |a, x| a.max(x.abs()));
            let err = row
                .iter()
                .zip(&y)
                .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
            if amax == 0.0 {
                assert_eq!(
                    err, 0.0,
                    "{name} row {i}: an all-zero row must come back zero"
                );
            } else if amax < TINY {
                // The f16 super-block scale underflows: such a row may come back all zero.
                assert!(err <= amax, "{name} row {i}: {err} off a row of max {amax}");
            } else if err / amax > worst.0 {
                worst = (err / amax, i);
            }
        }
        println!(
            "{name}: worst round-trip error {:.3} of the row's max (row {})",
            worst.0, worst.1
        );
        assert!(
            worst.0 <= bound,
            "{name}: row {} comes back {:.3} of its max off, more than {bound}",
            worst.1,
            worst.0
        );
    }
}
