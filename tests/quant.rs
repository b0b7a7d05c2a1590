//! The 32-element quantizers against gguf-py (byte-identical to llama-quantize for these formats):
//! every row of tests/fixtures/quant/vectors.json (made by make_vectors.py beside it) quantizes to
//! exactly the bytes gguf-py wrote, and so does candle's own quantizer. The K-quants against
//! llama-quantize itself: tests/fixtures/quant/kquant_vectors.json (make_kquant_vectors.py).

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use tunelab::quant::blocks::Format;
use tunelab::quant::kquants::{quantize_row_q4_k, quantize_row_q6_k};
use tunelab::quant::quantize::quantize_row;

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

#[test]
fn k_quants_quantize_byte_for_byte_as_llama_quantize() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/quant/kquant_vectors.json"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let rows = f32_rows(&v);
    assert_eq!(rows.len(), 16);
    type Quantizer = fn(&[f32]) -> tunelab::Result<Vec<u8>>;
    for (name, quantize) in [
        ("Q4_K", quantize_row_q4_k as Quantizer),
        ("Q6_K", quantize_row_q6_k),
    ] {
        let expected = v["quantized_hex"][name].as_array().unwrap();
        let mut wrong = Vec::new();
        for (i, (row, want)) in rows.iter().zip(expected).enumerate() {
            if quantize(row).unwrap() != hex(want.as_str().unwrap()) {
                wrong.push(i);
            }
        }
        assert!(
            wrong.is_empty(),
            "{name}: rows {wrong:?} differ from llama-quantize"
        );
    }
}
