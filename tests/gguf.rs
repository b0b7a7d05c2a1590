//! tunelab's GGUF reader and writer: every value type (nested arrays included) and tensor layout
//! survives a round trip; SmolLM2's GGUF read and written back is byte-identical to the file
//! llama.cpp's tools wrote; damaged files give one error naming the file and what is wrong.

use tunelab::gguf::types::type_id;
use tunelab::gguf::{GgmlType, GgufReader, GgufWriter, Value};

#[path = "support/smollm2.rs"]
mod support;
use support::smollm2;

fn every_value() -> Vec<(&'static str, Value)> {
    vec![
        ("u8", Value::U8(200)),
        ("i8", Value::I8(-100)),
        ("u16", Value::U16(60000)),
        ("i16", Value::I16(-30000)),
        ("u32", Value::U32(4_000_000_000)),
        ("i32", Value::I32(-2_000_000_000)),
        ("f32", Value::F32(-1.5e-7)),
        ("bool", Value::Bool(true)),
        ("string", Value::String("héllo 世界".into())),
        ("u64", Value::U64(u64::MAX)),
        ("i64", Value::I64(i64::MIN)),
        ("f64", Value::F64(std::f64::consts::PI)),
        ("strings", Value::strings(["a", "", "ccc"])),
        ("empty", Value::Array(type_id::F32, vec![])),
        (
            "nested",
            Value::Array(
                type_id::ARRAY,
                vec![
                    Value::Array(type_id::I32, vec![Value::I32(1), Value::I32(-2)]),
                    Value::Array(type_id::STRING, vec![Value::String("x".into())]),
                ],
            ),
        ),
    ]
}

fn sample(alignment: Option<u32>) -> GgufWriter {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    if let Some(a) = alignment {
        w.set("general.alignment", Value::U32(a));
    }
    for (k, v) in every_value() {
        w.set(format!("test.{k}"), v);
    }
    let f32s: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    w.add_tensor(
        "a.weight",
        &[3, 2],
        GgmlType::from_name("F32").unwrap(),
        f32s,
    )
    .unwrap();
    let q8 = GgmlType::from_name("Q8_0").unwrap();
    w.add_tensor("b.weight", &[64, 3], q8, vec![7u8; 6 * 34])
        .unwrap();
    let q4k = GgmlType::from_name("q4_k").unwrap();
    w.add_tensor("c.weight", &[256], q4k, vec![1u8; 144])
        .unwrap();
    w
}

#[test]
fn every_value_type_and_tensor_survives_a_round_trip() {
    for alignment in [None, Some(64)] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let w = sample(alignment);
        w.write(&path).unwrap();
        let r = GgufReader::open(&path).unwrap();
        assert_eq!(r.version, 3);
        assert_eq!(r.alignment, alignment.unwrap_or(32) as u64);
        for (k, v) in every_value() {
            assert_eq!(r.get(&format!("test.{k}")), Some(&v), "{k}");
        }
        assert_eq!(r.tensors.len(), 3);
        assert_eq!(r.data_offset % r.alignment, 0);
        let mut expected_offset = 0;
        for t in &r.tensors {
            assert_eq!(
                t.offset, expected_offset,
                "{}: llama.cpp wants no gaps",
                t.name
            );
            expected_offset += t.bytes().div_ceil(r.alignment) * r.alignment;
        }
        let b = r.tensor("b.weight").unwrap();
        assert_eq!(b.ne, vec![64, 3]);
        assert_eq!(r.tensor_bytes(b).unwrap(), vec![7u8; 6 * 34]);
        let a = r.tensor_bytes(r.tensor("a.weight").unwrap()).unwrap();
        assert_eq!(f32::from_le_bytes(a[20..24].try_into().unwrap()), 5.0);
        assert_eq!(r.file_len % r.alignment, 0, "the last tensor is padded too");
    }
}

#[test]
fn smollm2_read_and_written_back_is_byte_identical() {
    let Some(path) = smollm2() else { return };
    let r = GgufReader::open(&path).unwrap();
    assert_eq!(r.metadata.len(), 33);
    let mut w = GgufWriter::new();
    for (k, v) in &r.metadata {
        w.set(k.clone(), v.clone());
    }
    for t in &r.tensors {
        w.add_tensor(&t.name, &t.ne, t.ggml_type, r.tensor_bytes(t).unwrap())
            .unwrap();
    }
    let original = std::fs::read(&path).unwrap();
    let written = w.to_bytes().unwrap();
    assert_eq!(written.len(), original.len());
    assert!(written == original, "the rewritten file differs");
}

fn damaged(name: &str, bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    GgufReader::open(&path).unwrap_err().to_string()
}

#[test]
fn damaged_files_are_one_clear_error() {
    let good = sample(None).to_bytes().unwrap();
    let err = damaged("cut.gguf", &good[..good.len() - 100]);
    assert!(
        err.contains("cut.gguf") && err.contains("truncated"),
        "{err}"
    );
    let err = damaged("head.gguf", &good[..200]);
    assert!(err.contains("truncated"), "{err}");
    let err = damaged("magic.gguf", b"GGML\x03\0\0\0");
    assert!(err.contains("not a GGUF file"), "{err}");
    // An array claiming 2^60 elements must not be allocated.
    let mut w = GgufWriter::new();
    w.set("x", Value::Array(type_id::U8, vec![Value::U8(1)]));
    let mut bytes = w.to_bytes().unwrap();
    let count_at = 4 + 4 + 8 + 8 + 8 + 1 + 4 + 4; // magic, version, counts, key "x", type, elem type
    bytes[count_at..count_at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let err = damaged("huge.gguf", &bytes);
    assert!(
        err.contains("key \"x\"") && err.contains("cannot fit"),
        "{err}"
    );
}

#[test]
fn the_writer_refuses_what_llama_cpp_would_reject() {
    let mut w = GgufWriter::new();
    let q4 = GgmlType::from_name("Q4_0").unwrap();
    let err = w
        .add_tensor("w", &[40], q4, vec![0; 18])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not a multiple of Q4_0's block of 32"),
        "{err}"
    );
    let err = w
        .add_tensor("x".repeat(64), &[32], q4, vec![0; 18])
        .unwrap_err()
        .to_string();
    assert!(err.contains("at most 63"), "{err}");
    let err = w
        .add_tensor("w", &[32], q4, vec![0; 17])
        .unwrap_err()
        .to_string();
    assert!(err.contains("17 bytes given"), "{err}");
    w.set("bad", Value::Array(type_id::U8, vec![Value::I8(1)]));
    assert!(w.to_bytes().unwrap_err().to_string().contains("\"bad\""));
}
