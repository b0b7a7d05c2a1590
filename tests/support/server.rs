//! A `tunelab serve` process for tests: started on a free port, killed when dropped; and
//! request helpers over the library's blocking HTTP client.

// Each test binary uses part of this file.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tunelab::serve::client::{self, HttpResponse};

pub const TIMEOUT: Duration = Duration::from_secs(300);

/// A running server process.
pub struct Server {
    pub url: String,
    child: Child,
}

impl Server {
    /// `tunelab serve MODEL --port 0 ARGS...`, once `/health` answers 200.
    pub fn start(model: &str, args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tunelab"))
            .args(["serve", model, "--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tunelab serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("a first line").unwrap();
        let url = first
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {first:?}"))
            .to_string();
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let server = Server { url, child };
        for _ in 0..3000 {
            if let Ok(r) = server.get("/health") {
                if r.status == 200 {
                    return server;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the server did not become ready");
    }

    pub fn get(&self, path: &str) -> tunelab::Result<HttpResponse> {
        client::request("GET", &format!("{}{path}", self.url), &[], None, TIMEOUT)
    }

    /// POST raw bytes.
    pub fn post_raw(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
        client::request(
            "POST",
            &format!("{}{path}", self.url),
            headers,
            Some(body),
            TIMEOUT,
        )
        .unwrap()
    }

    /// POST JSON; the response.
    pub fn post(&self, path: &str, body: &Value) -> HttpResponse {
        self.post_raw(
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    /// POST JSON expecting 200; its JSON.
    pub fn ok(&self, path: &str, body: &Value) -> Value {
        let r = self.post(path, body);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json().unwrap()
    }

    /// A stream's `data:` payloads up to `[DONE]` (which is included), comments left out.
    pub fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let mut s = client::open(
            "POST",
            &format!("{}{path}", self.url),
            &[("Content-Type", "application/json")],
            Some(body.to_string().as_bytes()),
            TIMEOUT,
        )
        .unwrap();
        assert_eq!(s.status, 200);
        let mut events = Vec::new();
        while let Some(line) = s.next_line().unwrap() {
            if let Some(data) = line.strip_prefix("data: ") {
                events.push(data.to_string());
            }
        }
        events
    }

    /// A gauge or counter from `/metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").unwrap().text();
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A chat request body.
pub fn chat(model: &str, user: &str, max_tokens: usize) -> Value {
    serde_json::json!({
        "model": model, "max_tokens": max_tokens, "temperature": 0,
        "messages": [{"role": "user", "content": user}],
    })
}

/// The text of a streamed chat or completion (its content deltas joined).
pub fn streamed_text(events: &[String]) -> String {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            let c = v["choices"].get(0)?.clone();
            c["delta"]["content"]
                .as_str()
                .or(c["text"].as_str())
                .map(String::from)
        })
        .collect()
}

/// A LoRA adapter for `model` (a path or `tiny`) with random, non-zero factors, saved as a PEFT
/// folder: choosing it visibly changes answers.
pub fn noise_adapter(model: &str, dir: &std::path::Path, seed: u64) {
    let options = tunelab::model::LoadOptions {
        quantized: true,
        ..Default::default()
    };
    let model = tunelab::model::load(model, &options).unwrap();
    let config = tunelab::lora::LoraConfig {
        rank: 4,
        ..Default::default()
    };
    let adapter = tunelab::lora::Adapter::new(&model.llama, config, seed, "base").unwrap();
    for (_, var) in adapter.named_vars() {
        let noise =
            candle_core::Tensor::randn(0f32, 0.08, var.shape(), &candle_core::Device::Cpu).unwrap();
        var.set(&noise).unwrap();
    }
    tunelab::lora::peft::save(&adapter, dir, true).unwrap();
}

/// A fresh folder under the test target folder.
pub fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}
