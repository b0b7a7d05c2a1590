//! Importance-weighted quantization against `llama-quantize --pure --imatrix` itself, byte for
//! byte: tests/fixtures/quant/imatrix_vectors.json (made by make_imatrix_vectors.py beside it)
//! holds rows of synthetic tensors (special rows included: zeros, constant, tiny, spike, all
//! negative, all positive, huge), the per-column importance llama-quantize handed to ggml, and
//! the bytes it wrote for each of Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (rows of
//! 256, 512 and, for the 32-weight types, 576). `quantize_weighted` must reproduce every row.

use tunelab::ggml::weighted::quantize_weighted;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn f32s(s: &str) -> Vec<f32> {
    hex(s)
        .chunks(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn vectors() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/quant/imatrix_vectors.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn imatrix_quantization_is_byte_for_byte_llama_quantizes() {
    let v = vectors();
    let (mut checked, mut as_reference) = (0, 0);
    let mut wrong = Vec::new();
    for case in v["cases"].as_array().unwrap() {
        let tensor = format!(
            "{} ({} model)",
            case["tensor"].as_str().unwrap(),
            case["model"].as_str().unwrap()
        );
        let row_len = case["row_len"].as_u64().unwrap() as usize;
        let importance = f32s(case["importance_f32_le_hex"].as_str().unwrap());
        assert_eq!(importance.len(), row_len, "{tensor}");
        let rows: Vec<Vec<f32>> = case["rows_f32_le_hex"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| f32s(r.as_str().unwrap()))
            .collect();
        for (name, expected) in case["quantized_hex"].as_object().unwrap() {
            let expected = expected.as_array().unwrap();
            assert_eq!(expected.len(), rows.len(), "{tensor} {name}");
            // All rows at once, as the exporter will call it; then each row compared.
            let all: Vec<f32> = rows.concat();
            let got = quantize_weighted(name, &all, row_len, Some(&importance)).unwrap();
            let reference = quantize_weighted(name, &all, row_len, None).unwrap();
            let row_bytes = got.len() / rows.len();
            for (r, want) in expected.iter().enumerate() {
                let want = hex(want.as_str().unwrap());
                let got = &got[r * row_bytes..(r + 1) * row_bytes];
                checked += 1;
                as_reference += usize::from(reference[r * row_bytes..(r + 1) * row_bytes] == *want);
                if got != want.as_slice() {
                    let at = got.iter().zip(&want).position(|(a, b)| a != b);
                    let at = at.map_or("a different length".to_string(), |i| {
                        format!("byte {i}: {:#04x}, llama-quantize {:#04x}", got[i], want[i])
                    });
                    wrong.push(format!("{tensor} {name} row {r}: first difference at {at}"));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {checked} rows differ from llama-quantize --imatrix:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // 2 tensors × 9 types + 1 tensor × 4 types, 16 rows each.
    assert_eq!(checked, 22 * 16);
    // The vectors do exercise the imatrix paths: apart from special rows (all zero, …), their
    // bytes are not what the reference quantizers write.
    assert!(
        as_reference < checked / 4,
        "{as_reference} of {checked} rows are also the reference quantizers' bytes"
    );
}
