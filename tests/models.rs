//! Models as a user meets them: the tiny preset, SmolLM2 from its GGUF (tokenizer against the
//! Hugging Face `tokenizers` reference, greedy chat, perplexity), and broken files.

use std::path::PathBuf;

use tunelab::cancel::CancelToken;
use tunelab::generate::chat::{ChatSession, TemplateChoice};
use tunelab::generate::GenerateOptions;
use tunelab::model::{self, LoadOptions};

#[path = "support/smollm2.rs"]
mod support;
use support::smollm2;

#[test]
fn tiny_loads_fast_and_describes_itself() {
    let start = std::time::Instant::now();
    let tiny = model::load("tiny", &LoadOptions::default()).unwrap();
    println!("tiny loaded in {:?}", start.elapsed());
    let text = tiny.to_string();
    assert!(
        text.starts_with("Model llama (tiny, 0.9 M params, 4 layers"),
        "{text}"
    );
    assert!(text.contains("f32 on cpu"), "{text}");
    let again = model::load("tiny", &LoadOptions::default()).unwrap();
    assert!(
        tiny.llama
            .embed
            .eq(&again.llama.embed)
            .unwrap()
            .min_all()
            .unwrap()
            .to_scalar::<u8>()
            .unwrap()
            == 1,
        "same seed, same weights"
    );
    let other = model::load(
        "tiny",
        &LoadOptions {
            seed: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        tiny.llama
            .embed
            .ne(&other.llama.embed)
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<u8>()
            .unwrap()
            == 1
    );
}

#[test]
fn bad_model_paths_and_devices_are_clear_errors() {
    let e = model::load("no/such/model.gguf", &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no/such/model.gguf") && e.contains("fetch-smollm2"),
        "{e}"
    );
    let e = model::load("README.md", &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not a model"), "{e}");
    let e = model::load(
        "tiny",
        &LoadOptions {
            device: "gpu0".into(),
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("\"gpu0\" is not a device"), "{e}");
    if !cfg!(feature = "cuda") {
        let e = model::load(
            "tiny",
            &LoadOptions {
                device: "cuda:0".into(),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("built without CUDA") && e.contains("--features cuda"),
            "{e}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a gguf file at all").unwrap();
    let e = model::load(garbage.to_str().unwrap(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("garbage.gguf: header: not a readable GGUF file"),
        "{e}"
    );
}

#[test]
fn truncated_gguf_is_a_one_line_error() {
    let Some(path) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.gguf");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = model::load(cut.to_str().unwrap(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cut.gguf: tensor \"") && e.contains("the file is truncated"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
}

#[test]
fn smollm2_tokenizer_matches_hugging_face_tokenizers() {
    let Some(path) = smollm2() else { return };
    let m = model::load(
        path.to_str().unwrap(),
        &LoadOptions {
            quantized: true,
            ..Default::default()
        },
    )
    .unwrap();
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/smollm2_ids.json");
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    for case in &cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = m.tokenizer.encode(text).unwrap();
        assert_eq!(got, want, "encode {text:?}");
        assert_eq!(
            m.tokenizer.decode(&got, false).unwrap(),
            text,
            "decode {text:?}"
        );
    }
    assert_eq!(cases.len(), 10);
}

/// Load SmolLM2 (quantized or not) and ask the acceptance question greedily with the model's own
/// template; returns the reply and what was streamed.
fn ask_france(path: &std::path::Path, quantized: bool) -> (tunelab::generate::Generated, String) {
    let m = model::load(
        path.to_str().unwrap(),
        &LoadOptions {
            quantized,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(m.quantized, quantized);
    let template = TemplateChoice::resolve("auto", &m).unwrap();
    assert!(
        matches!(template, TemplateChoice::Jinja(_)),
        "SmolLM2's GGUF carries a chat template"
    );
    let options = GenerateOptions {
        max_new_tokens: 24,
        ..Default::default()
    };
    let mut session = ChatSession::new(m, template, String::new(), options);
    let mut streamed = String::new();
    let reply = session
        .ask(
            "What is the capital of France?",
            &CancelToken::new(),
            &mut |t| streamed.push_str(t),
        )
        .unwrap();
    (reply, streamed)
}

#[test]
fn smollm2_answers_paris_greedily_with_its_own_template() {
    let Some(path) = smollm2() else { return };
    let (reply, streamed) = ask_france(&path, false);
    println!("SmolLM2 (dequantized f32): {}", reply.text);
    assert!(reply.text.contains("Paris"), "{}", reply.text);
    assert_eq!(
        streamed, reply.text,
        "the reply is streamed as it is generated"
    );
    assert_eq!(reply.finish_reason, "stop");
}

#[test]
fn smollm2_quantized_answers_paris_too() {
    let Some(path) = smollm2() else { return };
    let (reply, _) = ask_france(&path, true);
    println!("SmolLM2 (Q4_1 blocks, f32 activations): {}", reply.text);
    assert!(reply.text.contains("Paris"), "{}", reply.text);
}

#[test]
fn smollm2_perplexity_on_a_license_text() {
    let Some(path) = smollm2() else { return };
    let m = model::load(path.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let text = std::fs::read_to_string("/usr/share/common-licenses/GPL-3").unwrap_or_else(|_| "The GNU General Public License is a free, copyleft license for software and other kinds of works. ".repeat(60));
    let text: String = text.chars().take(6000).collect();
    let p = tunelab::model::perplexity::perplexity(&m, &text, 256, None, None, &CancelToken::new())
        .unwrap();
    println!("SmolLM2 f32 perplexity, first 6000 characters of GPL-3, ctx 256: {:.3} over {} tokens in {} chunks", p.ppl, p.tokens, p.chunks);
    assert_eq!(p.tokens, p.chunks * 127);
    assert!(
        p.ppl > 1.5 && p.ppl < 30.0,
        "an English legal text should be quite predictable: {}",
        p.ppl
    );
}

/// bf16 weights and activations (the tiny preset in bf16) stay close to f32.
#[test]
fn bf16_and_f16_compute_stay_close_to_f32() {
    use candle_core::{DType, Tensor};
    let f32_model = model::load("tiny", &LoadOptions::default()).unwrap();
    let ids = f32_model
        .tokenizer
        .encode("a short prompt for half precision")
        .unwrap();
    let input = Tensor::new(ids.as_slice(), &candle_core::Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let want = f32_model
        .llama
        .forward(&input, None, None, model::Logits::All)
        .unwrap();
    for dtype in [DType::BF16, DType::F16] {
        let m = model::load(
            "tiny",
            &LoadOptions {
                dtype: Some(dtype),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(
            m.to_string().contains(&format!("{dtype:?}").to_lowercase()),
            "{m}"
        );
        let got = m
            .llama
            .forward(&input, None, None, model::Logits::All)
            .unwrap();
        let diff = (&got - &want)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt();
        let norm = want
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt();
        println!("{dtype:?} vs f32: relative L2 {:.2e}", diff / norm);
        // bf16 keeps 8 mantissa bits (f16 11): a few parts in a thousand per value.
        assert!(diff / norm < 2e-2, "{dtype:?}: relative L2 {}", diff / norm);
    }
}
