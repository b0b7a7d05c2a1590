//! The `openai` Python package (installed by `.ci/run`) drives `tunelab serve`: models, chat,
//! streaming with usage, an adapter chosen by `model`, completions, and the exceptions it raises
//! for 401, 404 and 400 (tests/peers/openai_client.py).

#[path = "support/server.rs"]
mod server;
#[path = "support/skip.rs"]
mod skip;

use std::process::Command;

/// The Python to run: `TUNELAB_PYTHON`, else `python3`; None when it lacks `openai`.
fn python_with_openai() -> Option<String> {
    let python = std::env::var("TUNELAB_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(python)
}

#[test]
fn the_openai_python_client_works_unchanged() {
    let Some(python) = python_with_openai() else {
        skip::skip(
            "the openai Python package",
            "python3 -m pip install openai (or set TUNELAB_PYTHON to a Python that has it)",
        );
        return;
    };
    skip::ran();
    // An adapter with random factors, so that choosing it by name visibly changes the answer.
    let dir = server::temp("openai_adapter");
    server::noise_adapter("tiny", &dir, 3);
    let lora = format!("tuned={}", dir.display());
    let s = server::Server::start("tiny", &["--api-key", "sk-test", "--lora", &lora]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/openai_client.py");
    let out = Command::new(python)
        .args([script, &s.url, "sk-test", "tuned"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
