//! LoRA fine-tuning on the real model: a short run of SmolLM2-135M-Instruct (dequantized) on the
//! shipped Chinese set lowers the loss on the trained examples and moves greedy answers to two
//! training prompts toward their training answers.

use std::collections::HashSet;
use std::path::PathBuf;

use tunelab::cancel::CancelToken;
use tunelab::data::{load, LoadOptions, Role};
use tunelab::generate::chat::{ChatSession, TemplateChoice};
use tunelab::generate::GenerateOptions;
use tunelab::lora::Adapter;
use tunelab::model::{self, Model};
use tunelab::output::Output;
use tunelab::train::{sft, Hooks, SftConfig};

#[path = "support/smollm2.rs"]
mod support;
use support::smollm2;

/// A dataset shipped in `data/`.
fn shipped(name: &str) -> tunelab::data::Dataset {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data");
    let options = LoadOptions {
        dir,
        ..Default::default()
    };
    load(name, &options, &CancelToken::new()).unwrap()
}

/// Trains with the output captured: the run and what it printed.
fn train(
    m: &Model,
    data: &tunelab::data::Dataset,
    cfg: &SftConfig,
) -> (tunelab::train::Run, String) {
    let cancel = CancelToken::new();
    let sink = Output::capture();
    let hooks = Hooks {
        on_log: None,
        cancel: &cancel,
        output: &sink,
        progress_bar: false,
        collective: None,
    };
    let run = sft(m, data, cfg, hooks).unwrap();
    (run, sink.captured())
}

/// Greedy reply to `prompt` with the ChatML template (as trained), with or without an adapter.
fn answer(m: &Model, adapter: Option<&Adapter>, prompt: &str) -> Vec<u32> {
    let options = GenerateOptions {
        max_new_tokens: 32,
        adapter: adapter.cloned(),
        ..Default::default()
    };
    let mut s = ChatSession::new(
        m.clone(),
        TemplateChoice::resolve("chatml", m).unwrap(),
        String::new(),
        options,
    );
    s.stream = false;
    let reply = s.ask(prompt, &CancelToken::new(), &mut |_| {}).unwrap();
    m.tokenizer.encode(&reply.text).unwrap()
}

/// Fraction of the reference's distinct tokens that the answer uses.
fn overlap(answer: &[u32], reference: &[u32]) -> f64 {
    let a: HashSet<_> = answer.iter().collect();
    let r: HashSet<_> = reference.iter().collect();
    r.intersection(&a).count() as f64 / r.len().max(1) as f64
}

#[test]
fn a_short_run_on_the_chinese_set_learns_its_answers() {
    let Some(path) = smollm2() else { return };
    let m = model::load(path.to_str().unwrap(), &Default::default()).unwrap();
    let data = shipped("instruct_zh").take(8);
    let pairs: Vec<(String, String)> = [0, 1]
        .iter()
        .map(|&i| {
            let ex = data.get(i).unwrap();
            assert_eq!(ex.messages[1].role, Role::Assistant);
            (
                ex.messages[0].content.clone(),
                ex.messages[1].content.clone(),
            )
        })
        .collect();
    let before: Vec<f64> = pairs
        .iter()
        .map(|(q, a)| overlap(&answer(&m, None, q), &m.tokenizer.encode(a).unwrap()))
        .collect();

    let out = tempfile::tempdir().unwrap();
    let cfg = SftConfig {
        template: "chatml".into(),
        learning_rate: 1e-3,
        num_train_epochs: 3.0,
        batch_size: 4,
        gradient_accumulation_steps: 1,
        cutoff_len: 256,
        logging_steps: 2,
        save_steps: 100,
        eval_dataset: Some(data.clone()),
        eval_steps: Some(6),
        lr_scheduler_type: tunelab::train::Schedule::Constant,
        out: Some(out.path().join("run")),
        ..Default::default()
    };
    let (run, printed) = train(&m, &data, &cfg);
    eprintln!("{printed}");
    let first = run.loss.first().unwrap().1;
    let last = run.loss.last().unwrap().1;
    assert!(last < first * 0.8, "SmolLM2 loss {first} → {last}");
    let eval = run.eval_loss.last().unwrap().1;
    assert!(
        eval < first,
        "eval loss on the trained examples {eval} vs first train loss {first}"
    );

    let after: Vec<f64> = pairs
        .iter()
        .map(|(q, a)| {
            overlap(
                &answer(&m, run.adapter.as_ref(), q),
                &m.tokenizer.encode(a).unwrap(),
            )
        })
        .collect();
    eprintln!("token overlap with the training answers: before {before:?}, after {after:?}");
    for (b, a) in before.iter().zip(&after) {
        assert!(
            a > b,
            "answers did not move toward the training answers: {before:?} → {after:?}"
        );
    }
}

/// The acceptance run for instability: LoRA on SmolLM2 at lr 0.1 (a thousand times the
/// usual) is read as unstable or diverged, and the run summary says so.
#[test]
fn a_run_at_learning_rate_0_1_is_called_unstable_or_diverged() {
    let Some(path) = smollm2() else { return };
    let m = model::load(path.to_str().unwrap(), &Default::default()).unwrap();
    let data = shipped("identity").take(20);
    let out = tempfile::tempdir().unwrap();
    let cfg = SftConfig {
        template: "chatml".into(),
        learning_rate: 0.1,
        max_steps: Some(10),
        batch_size: 2,
        gradient_accumulation_steps: 1,
        cutoff_len: 96,
        logging_steps: 1,
        save_steps: 100,
        plot_loss: false,
        out: Some(out.path().join("run")),
        ..Default::default()
    };
    let (run, _) = train(&m, &data, &cfg);
    let d = &run.diagnosis;
    eprintln!("lr 0.1 losses {:?}\n{d}", run.loss);
    assert!(
        matches!(
            d.verdict,
            tunelab::curves::Verdict::Unstable | tunelab::curves::Verdict::Diverged
        ),
        "{d}"
    );
    assert!(format!("{run}").contains(&format!("verdict: {}", d.verdict.name())));
}
