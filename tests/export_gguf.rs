//! Exporting a model as a llama GGUF: SmolLM2 written in F32 and read back gives the same
//! logits (names, q/k permutation and metadata undone exactly), Q8_0 stays close with every 2-D
//! weight in Q8_0 and norms in F32, a merged LoRA adapter lands in the file, and models without a
//! GGUF tokenizer are refused with a clear line. (That llama.cpp loads the files and generates is
//! checked by hand; see docs/export.md.)

use candle_core::Tensor;
use tunelab::gguf::export::{export_gguf, ExportOptions, ExportType};
use tunelab::gguf::GgufReader;
use tunelab::lora::{Adapter, LoraConfig};
use tunelab::model::{self, Model};

#[path = "support/smollm2.rs"]
mod support;
use support::smollm2;

#[path = "support/logits.rs"]
mod compare;
use compare::rel;

/// SmolLM2's ids for a short chat line.
const IDS: &[u32] = &[1, 504, 3458, 282, 4649, 314, 2];

fn logits(m: &Model, adapter: Option<&Adapter>) -> Vec<f32> {
    compare::logits(m, IDS, adapter)
}

fn export(m: &Model, adapter: Option<&Adapter>, ty: &str, path: &std::path::Path) {
    let opts = ExportOptions {
        target: ExportType::named(ty).unwrap(),
    };
    export_gguf(m, adapter, path, &opts).unwrap();
}

#[test]
fn smollm2_exported_and_reloaded_computes_the_same() {
    let Some(path) = smollm2() else { return };
    let m = model::load(path.to_str().unwrap(), &Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let f32_path = dir.path().join("f32.gguf");
    export(&m, None, "F32", &f32_path);
    let back = model::load(f32_path.to_str().unwrap(), &Default::default()).unwrap();
    assert_eq!(logits(&m, None), logits(&back, None), "F32 round trip");
    let r = GgufReader::open(&f32_path).unwrap();
    for key in [
        "general.architecture",
        "llama.block_count",
        "llama.attention.head_count_kv",
        "tokenizer.ggml.tokens",
        "tokenizer.chat_template",
        "general.file_type",
    ] {
        assert!(r.get(key).is_some(), "{key} missing");
    }
    assert!(
        r.tensor("output.weight").is_none(),
        "tied embeddings stay tied"
    );

    let q8_path = dir.path().join("q8.gguf");
    export(&m, None, "Q8_0", &q8_path);
    let r = GgufReader::open(&q8_path).unwrap();
    for t in &r.tensors {
        let want = if t.ne.len() == 1 { "F32" } else { "Q8_0" };
        assert_eq!(t.ggml_type.name, want, "{}", t.name);
    }
    let back = model::load(q8_path.to_str().unwrap(), &Default::default()).unwrap();
    let e = rel(&logits(&m, None), &logits(&back, None));
    assert!(e < 2e-2, "Q8_0 logits {e}");
}

#[test]
fn an_adapter_is_merged_into_the_exported_weights() {
    let Some(path) = smollm2() else { return };
    let m = model::load(path.to_str().unwrap(), &Default::default()).unwrap();
    let lora = LoraConfig {
        rank: 4,
        ..Default::default()
    };
    let adapter = Adapter::new(&m.llama, lora, 3, &m.source).unwrap();
    for (name, var) in adapter.named_vars() {
        if name.ends_with("lora_B.weight") {
            let b = (var.as_tensor().ones_like().unwrap() * 0.01).unwrap();
            var.set(&b).unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged.gguf");
    export(&m, Some(&adapter), "F32", &out);
    let back = model::load(out.to_str().unwrap(), &Default::default()).unwrap();
    let with_adapter = logits(&m, Some(&adapter));
    let e = rel(&with_adapter, &logits(&back, None));
    assert!(e < 1e-4, "merged export vs model + adapter: {e}");
    assert!(
        rel(&with_adapter, &logits(&m, None)) > 1e-3,
        "the adapter changed nothing"
    );
}

/// A model that did not come from a GGUF (here `tiny`, a byte-level BPE tokenizer from a
/// tokenizer.json) gets its tokenizer converted: read back, it tokenizes a varied text the same
/// and computes the same logits. (llama.cpp loads the file and tokenizes the same text to the
/// same ids; see docs/export.md.)
#[test]
fn a_model_with_a_hugging_face_tokenizer_exports_and_reads_back() {
    let tiny = model::load("tiny", &Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.gguf");
    export(&tiny, None, "F32", &path);
    let r = GgufReader::open(&path).unwrap();
    let key = |k: &str| r.get(k).and_then(|v| v.as_str()).map(str::to_string);
    assert_eq!(key("tokenizer.ggml.model").as_deref(), Some("gpt2"));
    assert_eq!(key("tokenizer.ggml.pre").as_deref(), Some("gpt-2"));
    let back = model::load(path.to_str().unwrap(), &Default::default()).unwrap();
    let text = "Hello world!  The quick brown fox, 你好 🙂 code: fn main() {}\n\t<|im_start|>user";
    assert_eq!(
        tiny.tokenizer.encode(text).unwrap(),
        back.tokenizer.encode(text).unwrap()
    );
    assert_eq!(back.chat_template, tiny.chat_template);
    let ids = [5u32, 100, 200, 300, 2];
    assert_eq!(
        compare::logits(&tiny, &ids, None),
        compare::logits(&back, &ids, None)
    );
}

fn fnv(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// Every preset tunelab offers gives SmolLM2's tensors the types and bytes llama-quantize gives
/// them from the same f32 values (tests/fixtures/quant/smollm2_presets.json, made by
/// make_smollm2_expected.sh: per tensor the type and a hash of llama-quantize's bytes). Prints,
/// per preset, how many tensors and bytes agree, then fails naming every tensor that does not.
#[test]
fn smollm2_presets_equal_llama_quantize_tensor_for_tensor() {
    let Some(path) = smollm2() else { return };
    let m = model::load(path.to_str().unwrap(), &Default::default()).unwrap();
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/quant/smollm2_presets.json"
    );
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let presets = expected["presets"].as_object().unwrap();
    // Every preset that quantizes without an importance matrix (Q2_K_S needs one: it is checked
    // in tests/export_gguf_imatrix.rs).
    let without_imatrix = tunelab::quant::mixture::PRESETS
        .iter()
        .filter(|p| !p.needs_imatrix())
        .count();
    assert_eq!(presets.len(), without_imatrix);
    let dir = tempfile::tempdir().unwrap();
    let mut wrong = Vec::new();
    for (preset, tensors) in presets {
        let out = dir.path().join(format!("{preset}.gguf"));
        export(&m, None, preset, &out);
        let r = GgufReader::open(&out).unwrap();
        let tensors = tensors.as_object().unwrap();
        assert_eq!(r.tensors.len(), tensors.len(), "{preset}");
        let (mut same, mut same_bytes, mut all_bytes) = (0, 0u64, 0u64);
        for t in &r.tensors {
            let want = &tensors[&t.name];
            let bytes = r.tensor_bytes(t).unwrap();
            all_bytes += bytes.len() as u64;
            if t.ggml_type.name != want[0] {
                wrong.push(format!(
                    "{preset} {}: type {} (llama-quantize: {})",
                    t.name, t.ggml_type.name, want[0]
                ));
            } else if fnv(&bytes) != want[1].as_str().unwrap() {
                wrong.push(format!(
                    "{preset} {} ({}): bytes differ from llama-quantize's",
                    t.name, t.ggml_type.name
                ));
            } else {
                same += 1;
                same_bytes += bytes.len() as u64;
            }
        }
        println!(
            "{preset:7} {same}/{} tensors, {same_bytes}/{all_bytes} bytes as llama-quantize's",
            r.tensors.len()
        );
        std::fs::remove_file(&out).unwrap();
    }
    assert!(
        wrong.is_empty(),
        "{} tensors differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// `tunelab quantize IN OUT TYPE` mirrors llama-quantize: SmolLM2 in F32 to Q4_K_M gives the
/// very tensors llama-quantize writes (types and bytes, in the input's order), Q6_K from the
/// shipped Q4_1 file gives the fixture's types, `--tensor-type` rules apply, and a type tunelab
/// cannot make is one clear line and a failing exit status.
#[test]
fn the_quantize_command_writes_the_preset() {
    let Some(path) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let tunelab = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tunelab"))
            .arg("quantize")
            .args(args)
            .output()
            .unwrap()
    };
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/quant/smollm2_presets.json"
    );
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();

    let f32_path = dir.path().join("f32.gguf");
    let m = model::load(path.to_str().unwrap(), &Default::default()).unwrap();
    export(&m, None, "F32", &f32_path);
    drop(m);
    let out = dir.path().join("q4km.gguf");
    let run = tunelab(&[f32_path.as_ref(), out.as_ref(), "Q4_K_M".as_ref()]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let r = GgufReader::open(&out).unwrap();
    let names: Vec<&str> = r.tensors.iter().map(|t| t.name.as_str()).collect();
    let input: Vec<String> = GgufReader::open(&f32_path)
        .unwrap()
        .tensors
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, input, "tensors in the input's order");
    for t in &r.tensors {
        let want = &expected["presets"]["Q4_K_M"][&t.name];
        assert_eq!(t.ggml_type.name, want[0], "{}", t.name);
        assert_eq!(
            fnv(&r.tensor_bytes(t).unwrap()),
            want[1],
            "{} bytes",
            t.name
        );
    }
    let file_type = r.get("general.file_type").and_then(|v| v.as_u64());
    assert_eq!(file_type, Some(15));

    let out = dir.path().join("q6.gguf");
    let run = tunelab(&[
        path.as_ref(),
        out.as_ref(),
        "Q6_K".as_ref(),
        "--tensor-type".as_ref(),
        "blk\\.0\\.ffn_up=Q4_0".as_ref(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let r = GgufReader::open(&out).unwrap();
    for t in &r.tensors {
        let want = if t.name == "blk.0.ffn_up.weight" {
            "Q4_0"
        } else {
            expected["presets"]["Q6_K"][&t.name][0].as_str().unwrap()
        };
        assert_eq!(t.ggml_type.name, want, "{}", t.name);
    }

    let bad_out = dir.path().join("x.gguf");
    let bad = tunelab(&[path.as_ref(), bad_out.as_ref(), "IQ2_XXS".as_ref()]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("IQ2_XXS") && err.contains("Q4_K_M"),
        "{err}"
    );
    assert!(!bad_out.exists());
}

/// `export_lora_gguf` writes llama.cpp's adapter layout: metadata, two F32 tensors per adapted
/// weight with PEFT's shapes in ggml order, A as is and B's rows in llama.cpp's rotary order for
/// q and k (rsLoRA's alpha·√r so that llama.cpp's alpha/r scale is right). (llama.cpp's `--lora`
/// applying it to the base gives the merged model's perplexity; see docs/export.md.)
#[test]
fn a_lora_adapter_becomes_llama_cpp_s_adapter_gguf() {
    use tunelab::gguf::export::permute_rows;
    use tunelab::gguf::lora_export::export_lora_gguf;
    let tiny = model::load("tiny", &Default::default()).unwrap();
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        rslora: true,
        ..Default::default()
    };
    let adapter = Adapter::new(&tiny.llama, lora, 7, "tiny").unwrap();
    for (name, var) in adapter.named_vars() {
        if name.ends_with("lora_B.weight") {
            let b = var.as_tensor().rand_like(-1.0, 1.0).unwrap();
            var.set(&b).unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lora.gguf");
    let report = export_lora_gguf(&adapter, &tiny, &path).unwrap();
    let c = tiny.config();
    assert_eq!(report.tensors, 2 * 7 * c.num_hidden_layers);
    let r = GgufReader::open(&path).unwrap();
    let s = |k: &str| r.get(k).and_then(|v| v.as_str()).map(str::to_string);
    assert_eq!(s("general.type").as_deref(), Some("adapter"));
    assert_eq!(s("adapter.type").as_deref(), Some("lora"));
    assert_eq!(s("general.architecture").as_deref(), Some("llama"));
    match r.get("adapter.lora.alpha") {
        Some(tunelab::gguf::Value::F32(a)) => assert!((a - 16.0).abs() < 1e-5, "{a}"), // 8·√4
        other => panic!("adapter.lora.alpha: {other:?}"),
    }
    let f32s = |name: &str| -> (Vec<u64>, Vec<f32>) {
        let t = r.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(t.ggml_type.name, "F32");
        let b = r.tensor_bytes(t).unwrap();
        let v = b
            .chunks_exact(4)
            .map(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]]))
            .collect();
        (t.ne.clone(), v)
    };
    let flat = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    for (target, heads) in [
        (tunelab::lora::Target::Q, Some(c.num_attention_heads)),
        (tunelab::lora::Target::K, Some(c.num_key_value_heads)),
        (tunelab::lora::Target::Down, None),
    ] {
        let pair = adapter.pair(1, target).unwrap();
        let base = format!("blk.1.{}.weight", target.gguf_part());
        let (ne_a, a) = f32s(&format!("{base}.lora_a"));
        let (ne_b, b) = f32s(&format!("{base}.lora_b"));
        let (rank, n_in) = pair.a.as_tensor().dims2().unwrap();
        let (n_out, _) = pair.b.as_tensor().dims2().unwrap();
        assert_eq!(ne_a, vec![n_in as u64, rank as u64], "{base} A");
        assert_eq!(ne_b, vec![rank as u64, n_out as u64], "{base} B");
        assert_eq!(a, flat(pair.a.as_tensor()), "{base}: A is written as is");
        let want_b = match heads {
            Some(h) => permute_rows(&flat(pair.b.as_tensor()), rank, h),
            None => flat(pair.b.as_tensor()),
        };
        assert_eq!(b, want_b, "{base}: B");
    }
}
