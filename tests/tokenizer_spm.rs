//! SentencePiece vocabularies in GGUF files (`tokenizer.ggml.model = "llama"`): tunelab's
//! tokenizer gives llama.cpp's expected ids for every text of llama.cpp's own tokenizer test
//! (`tests/fixtures/tokenizer/llamacpp/`), and decoding gives the text back.

use std::path::Path;

use tunelab::model::gguf::GgufFile;
use tunelab::model::tokenizer::Tokenizer;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokenizer/llamacpp")
        .join(name)
}

fn spm_tokenizer() -> Tokenizer {
    let path = fixture("ggml-vocab-llama-spm.gguf");
    let file = GgufFile::open(&path).unwrap();
    let mut f = std::fs::File::open(&path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    Tokenizer::from_gguf(&file, &content).unwrap()
}

#[test]
fn llama_spm_matches_llama_cpp_expected_ids() {
    let tok = spm_tokenizer();
    let inputs = std::fs::read_to_string(fixture("ggml-vocab-llama-spm.gguf.inp")).unwrap();
    let outputs = std::fs::read_to_string(fixture("ggml-vocab-llama-spm.gguf.out")).unwrap();
    // The file ends with a separator: the last piece is empty and has no line in `.out`.
    let texts: Vec<&str> = inputs
        .strip_suffix("\n__ggml_vocab_test__\n")
        .unwrap_or(&inputs)
        .split("\n__ggml_vocab_test__\n")
        .collect();
    let expected: Vec<Vec<u32>> = outputs
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert_eq!(texts.len(), expected.len());
    assert!(texts.len() >= 40, "{} texts", texts.len());
    let mut wrong = Vec::new();
    for (i, (text, want)) in texts.iter().zip(&expected).enumerate() {
        let got = tok.encode(text).unwrap();
        if &got != want {
            wrong.push(format!(
                "text {i} {text:?}: got {got:?}, llama.cpp {want:?}"
            ));
        }
        let back = tok.decode(&got, false).unwrap();
        if back != *text && !text.is_empty() {
            wrong.push(format!("text {i} {text:?} decodes to {back:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} mismatches:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn special_tokens_are_parsed_and_the_vocabulary_is_complete() {
    let tok = spm_tokenizer();
    assert_eq!(tok.vocab_size(), 32000);
    assert_eq!(tok.token_id("<s>"), Some(1));
    assert_eq!(tok.token_id("</s>"), Some(2));
    assert_eq!(tok.encode("<s>Hello</s>").unwrap()[0], 1);
    assert!(tok.source.contains("SentencePiece"));
}
