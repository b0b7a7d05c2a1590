//! `tunelab serve` on SmolLM2 (quantized, as llama-server serves it): greedy answers equal the
//! library's chat; eight concurrent requests, mixing the base and an adapter, each equal their
//! answer alone (batch invariance on the real model's kernels); a client that leaves during a
//! long prompt frees the engine at once.

#[path = "support/server.rs"]
mod server;
#[path = "support/smollm2.rs"]
mod support;

use std::time::Duration;

use serde_json::json;
use server::{chat, noise_adapter, temp, Server};
use tunelab::serve::client;

#[test]
fn smollm2_batches_answer_as_each_alone_and_as_the_library() {
    let Some(path) = support::smollm2() else {
        return;
    };
    let path = path.to_string_lossy().to_string();
    let dir = temp("serve_smollm2_adapter");
    noise_adapter(&path, &dir, 5);
    let lora = format!("tuned={}", dir.display());
    let s = Server::start(
        &path,
        &[
            "--quantized",
            "--parallel",
            "8",
            "--alias",
            "smollm2",
            "--lora",
            &lora,
        ],
    );

    // Greedy: the library's chat with the model's own template.
    let options = tunelab::model::LoadOptions {
        quantized: true,
        ..Default::default()
    };
    let model = tunelab::model::load(&path, &options).unwrap();
    let template = tunelab::generate::chat::TemplateChoice::resolve("auto", &model).unwrap();
    let generate = tunelab::generate::GenerateOptions {
        max_new_tokens: 24,
        ..Default::default()
    };
    let mut session =
        tunelab::generate::chat::ChatSession::new(model, template, String::new(), generate);
    let want = session
        .ask(
            "What is the capital of France?",
            &Default::default(),
            &mut |_| {},
        )
        .unwrap();
    let got = s.ok(
        "/v1/chat/completions",
        &chat("smollm2", "What is the capital of France?", 24),
    );
    assert_eq!(
        got["choices"][0]["message"]["content"].as_str().unwrap(),
        want.text
    );

    let requests: Vec<_> = (0..8)
        .map(|i| {
            chat(
                if i % 2 == 0 { "smollm2" } else { "tuned" },
                &format!("Write one sentence about the number {i}."),
                20,
            )
        })
        .collect();
    let text = |v: serde_json::Value| {
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let alone: Vec<String> = requests
        .iter()
        .map(|b| text(s.ok("/v1/chat/completions", b)))
        .collect();
    assert_ne!(
        alone[0],
        text(s.ok("/v1/chat/completions", &{
            let mut b = requests[0].clone();
            b["model"] = json!("tuned");
            b
        }))
    );
    let together: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = requests
            .iter()
            .map(|b| scope.spawn(|| text(s.ok("/v1/chat/completions", b))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, alone);

    // A long prompt whose client gives up while it is processed.
    let long = "The history of the city is long and full of events. ".repeat(160);
    let body = json!({"model": "smollm2", "max_tokens": 8, "temperature": 0, "messages": [{"role": "user", "content": long}]});
    let gave_up = client::request(
        "POST",
        &format!("{}/v1/chat/completions", s.url),
        &[],
        Some(body.to_string().as_bytes()),
        Duration::from_millis(300),
    );
    assert!(gave_up.is_err(), "the client timed out first");
    s.ok("/v1/chat/completions", &chat("smollm2", "hi", 2));
    assert_eq!(s.metric("tunelab_active_sequences"), 0.0);
    assert!(s.metric("tunelab_requests_cancelled_total") >= 1.0);
}
