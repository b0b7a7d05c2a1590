//! Supervised encoding against LLaMA-Factory's own output: `tests/fixtures/encoding/lf_golden.json`
//! was written by LLaMA-Factory 0.9.5's template and processor code
//! (`tests/fixtures/encoding/make_lf_encoding.py`) on records of its demo datasets, with the
//! tokenizer in `tests/fixtures/encoding/tokenizer/`. Token ids and label masks must match exactly,
//! for the llama3, chatml, qwen and default templates, with truncation, train_on_prompt,
//! mask_history and packing.

use std::path::PathBuf;

#[path = "support/skip.rs"]
mod skip;

use serde_json::Value;
use tunelab::data::encode::{encode_example, pack, EncodeOptions, Encoded, IGNORE};
use tunelab::data::template;
use tunelab::data::{Example, Message, Role};
use tunelab::model::Tokenizer;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoding")
}

fn golden() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("lf_golden.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(&fixture_dir().join("tokenizer/tokenizer.json")).unwrap()
}

fn example_of(case: &Value) -> Example {
    Example {
        system: case["system"].as_str().unwrap().to_string(),
        tools: case["tools"].as_str().unwrap().to_string(),
        messages: case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                Message::new(
                    Role::parse(m["role"].as_str().unwrap()).unwrap(),
                    m["content"].as_str().unwrap(),
                )
            })
            .collect(),
    }
}

fn options(g: &Value, template: &str, case: &Value) -> EncodeOptions {
    let fix = &g["tokenizer_fix"][template];
    EncodeOptions {
        cutoff_len: case["cutoff_len"].as_u64().unwrap() as usize,
        train_on_prompt: case["train_on_prompt"].as_bool().unwrap_or(false),
        mask_history: case["mask_history"].as_bool().unwrap_or(false),
        bos_id: fix["bos_token_id"].as_u64().map(|v| v as u32),
        eos_id: fix["eos_token_id"].as_u64().unwrap() as u32,
        today: g["llama3_tool_date"].as_str().unwrap().to_string(),
    }
}

fn ints<T: TryFrom<i64>>(v: &Value) -> Vec<T>
where
    T::Error: std::fmt::Debug,
{
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| T::try_from(x.as_i64().unwrap()).unwrap())
        .collect()
}

#[test]
fn every_case_matches_llamafactory_token_for_token() {
    let g = golden();
    let tok = tokenizer();
    let tokenize = |s: &str| tok.encode(s);
    let cases = g["cases"].as_array().unwrap();
    assert!(cases.len() >= 100, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let name = case["template"].as_str().unwrap();
        let t = template::get(name).unwrap();
        let opts = options(&g, name, case);
        let got = encode_example(&example_of(case), t, &opts, &tokenize).unwrap();
        let want = Encoded {
            input_ids: ints(&case["input_ids"]),
            labels: ints(&case["labels"]),
        };
        if got != want {
            failures.push(format!(
                "{}[{}] {name} {}: {} ids vs LLaMA-Factory's {}; first difference at {:?}",
                case["dataset"],
                case["index"],
                case["setting"],
                got.len(),
                want.len(),
                got.input_ids
                    .iter()
                    .zip(&want.input_ids)
                    .zip(got.labels.iter().zip(&want.labels))
                    .position(|((a, b), (c, d))| a != b || c != d)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn packing_matches_llamafactory_rows() {
    let g = golden();
    let tok = tokenizer();
    let tokenize = |s: &str| tok.encode(s);
    let t = template::get("chatml").unwrap();
    for case in g["packing_cases"].as_array().unwrap() {
        let effective = case["effective_cutoff_len"].as_u64().unwrap() as usize;
        let row_len = case["row_len"].as_u64().unwrap() as usize;
        let neat = case["neat_packing"].as_bool().unwrap();
        let pad = g["tokenizer_fix"]["chatml"]["pad_token_id"]
            .as_u64()
            .unwrap() as u32;
        // The packed records are alpaca_en_demo 0..8; their messages come from our own loader.
        let lf = std::env::var_os("TUNELAB_LF_DATA")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/llamafactory-data")
            });
        if !lf.join("dataset_info.json").is_file() {
            skip::skip(
                "LLaMA-Factory's demo data",
                "put it at ../shared/llamafactory-data or set TUNELAB_LF_DATA",
            );
            return;
        }
        skip::ran();
        let ds = tunelab::data::load(
            "alpaca_en_demo",
            &tunelab::data::LoadOptions {
                dir: lf.clone(),
                ..Default::default()
            },
            &tunelab::cancel::CancelToken::new(),
        )
        .unwrap();
        let opts = EncodeOptions {
            cutoff_len: effective,
            train_on_prompt: false,
            mask_history: false,
            bos_id: Some(1024),
            eos_id: 2,
            today: String::new(),
        };
        let encoded: Vec<Encoded> = ints::<usize>(&case["indices"])
            .into_iter()
            .map(|i| encode_example(ds.get(i).unwrap(), t, &opts, &tokenize).unwrap())
            .collect();
        let lengths: Vec<usize> = encoded.iter().map(Encoded::len).collect();
        assert_eq!(lengths, ints::<usize>(&case["example_lengths"]));
        let (rows, dropped) = pack(encoded, row_len, pad, neat);
        assert_eq!(dropped, 0);
        let want = case["rows"].as_array().unwrap();
        assert_eq!(rows.len(), want.len());
        for (r, w) in rows.iter().zip(want) {
            assert_eq!(r.input_ids, ints::<u32>(&w["input_ids"]), "neat {neat}");
            assert_eq!(r.labels, ints::<i32>(&w["labels"]));
            assert_eq!(r.position_ids, ints::<u32>(&w["position_ids"]));
            assert_eq!(r.segment_ids, ints::<u32>(&w["attention_mask"]));
        }
        assert!(rows.iter().all(|r| r.labels.iter().any(|&l| l != IGNORE)));
    }
}

#[test]
fn our_loader_gives_the_messages_llamafactory_encoded() {
    let g = golden();
    let lf = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/llamafactory-data");
    let lf = std::env::var_os("TUNELAB_LF_DATA")
        .map(PathBuf::from)
        .unwrap_or(lf);
    if !lf.join("dataset_info.json").is_file() {
        assert!(
            std::env::var_os("CI").is_none(),
            "LLaMA-Factory data missing"
        );
        return;
    }
    for case in g["cases"].as_array().unwrap() {
        if case["setting"] != "default" || case["template"] != "chatml" {
            continue;
        }
        let name = case["dataset"].as_str().unwrap();
        let ds = tunelab::data::load(
            name,
            &tunelab::data::LoadOptions {
                dir: lf.clone(),
                ..Default::default()
            },
            &tunelab::cancel::CancelToken::new(),
        )
        .unwrap();
        let index = case["index"].as_u64().unwrap() as usize;
        assert_eq!(ds.get(index).unwrap(), &example_of(case), "{name}[{index}]");
    }
}
