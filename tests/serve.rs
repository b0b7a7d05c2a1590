//! `tunelab serve` on the tiny model, over real HTTP: OpenAI's shapes, streamed and not;
//! answers equal to the library's; batch invariance with mixed adapters; stop strings across
//! tokens; client disconnects; malformed requests; the API key, CORS, body limit, context limit
//! and a full queue.

#[path = "support/server.rs"]
mod server;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use server::{chat, noise_adapter, streamed_text, temp, Server, TIMEOUT};
use tunelab::serve::client;

#[test]
fn chat_and_completion_answers_have_openai_shapes_streamed_or_not() {
    let s = Server::start("tiny", &["--alias", "tiny-base"]);
    let models = s.get("/v1/models").unwrap().json().unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "tiny-base");
    assert_eq!(models["data"][0]["parent"], Value::Null);

    let body = chat("tiny-base", "hello there", 12);
    let whole = s.ok("/v1/chat/completions", &body);
    assert!(whole["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["model"], "tiny-base");
    let choice = &whole["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(["stop", "length"].contains(&choice["finish_reason"].as_str().unwrap()));
    let usage = &whole["usage"];
    let n = usage["completion_tokens"].as_u64().unwrap();
    assert!((1..=12).contains(&n));
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + n
    );
    assert_eq!(whole["timings"]["predicted_n"].as_u64(), Some(n));
    if choice["finish_reason"] == "length" {
        assert_eq!(n, 12);
    }

    // Streamed: the same text; one id; role only first; a closing empty delta; usage only when
    // asked for; [DONE] last.
    for include_usage in [false, true] {
        let mut b = body.clone();
        b["stream"] = json!(true);
        if include_usage {
            b["stream_options"] = json!({"include_usage": true});
        }
        let events = s.stream("/v1/chat/completions", &b);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert_eq!(
            streamed_text(&events),
            choice["message"]["content"].as_str().unwrap()
        );
        let id = &chunks[0]["id"];
        assert!(chunks
            .iter()
            .all(|c| &c["id"] == id && c["object"] == "chat.completion.chunk"));
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let with_role = chunks
            .iter()
            .filter(|c| !c["choices"][0]["delta"]["role"].is_null());
        assert_eq!(with_role.count(), 1);
        let usage_chunks: Vec<&Value> = chunks
            .iter()
            .filter(|c| c["choices"] == json!([]))
            .collect();
        let closing = if include_usage {
            assert_eq!(usage_chunks.len(), 1);
            assert_eq!(usage_chunks[0]["usage"], whole["usage"]);
            &chunks[chunks.len() - 2]
        } else {
            assert!(usage_chunks.is_empty());
            &chunks[chunks.len() - 1]
        };
        assert_eq!(closing["choices"][0]["delta"], json!({}));
        assert_eq!(
            closing["choices"][0]["finish_reason"],
            choice["finish_reason"]
        );
    }

    // Completions: text_completion, the same text streamed, legacy logprobs.
    let b = json!({"prompt": "Once upon", "max_tokens": 6, "temperature": 0, "logprobs": 2});
    let c = s.ok("/v1/completions", &b);
    assert!(c["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(c["object"], "text_completion");
    let lp = &c["choices"][0]["logprobs"];
    assert_eq!(
        lp["tokens"].as_array().unwrap().len(),
        lp["token_logprobs"].as_array().unwrap().len()
    );
    assert!(lp["top_logprobs"][0].as_object().unwrap().len() == 2);
    let mut b2 = b.clone();
    b2["stream"] = json!(true);
    let events = s.stream("/v1/completions", &b2);
    assert_eq!(
        streamed_text(&events),
        c["choices"][0]["text"].as_str().unwrap()
    );

    // Chat logprobs: one entry per token, the chosen token's logprob among the top ones.
    let mut b = chat("tiny-base", "hi", 4);
    b["logprobs"] = json!(true);
    b["top_logprobs"] = json!(3);
    let r = s.ok("/v1/chat/completions", &b);
    let content = r["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(!content.is_empty());
    for e in content {
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert!(e["logprob"].as_f64().unwrap() <= top[0]["logprob"].as_f64().unwrap() + 1e-6);
    }

    // Native endpoints.
    let t = s.ok("/tokenize", &json!({"content": "hello world"}));
    let ids = t["tokens"].clone();
    assert!(t["count"].as_u64().unwrap() >= 2);
    let d = s.ok("/detokenize", &json!({"tokens": ids}));
    assert_eq!(d["content"], "hello world");
    let p = s.ok(
        "/apply-template",
        &json!({"messages": [{"role": "user", "content": "hi"}]}),
    );
    assert!(p["prompt"].as_str().unwrap().contains("hi"));
    let metrics = s.get("/metrics").unwrap().text();
    assert!(
        metrics.contains("tunelab_generated_tokens_total"),
        "{metrics}"
    );
}

/// Greedy answers are the library's `chat` and `generate` answers, with the same template.
#[test]
fn greedy_answers_equal_the_librarys() {
    use tunelab::generate::chat::{ChatSession, TemplateChoice};
    use tunelab::generate::GenerateOptions;
    let model = tunelab::model::load("tiny", &Default::default()).unwrap();
    let s = Server::start("tiny", &[]);
    for question in ["What is LoRA?", "Say something in 中文 ✨"] {
        let template = TemplateChoice::resolve("auto", &model).unwrap();
        let options = GenerateOptions {
            max_new_tokens: 20,
            ..Default::default()
        };
        let mut session = ChatSession::new(model.clone(), template, String::new(), options.clone());
        let cancel = tunelab::cancel::CancelToken::new();
        let want = session.ask(question, &cancel, &mut |_| {}).unwrap();
        let got = s.ok("/v1/chat/completions", &chat("tiny", question, 20));
        assert_eq!(
            got["choices"][0]["message"]["content"].as_str().unwrap(),
            want.text
        );
        assert_eq!(
            got["usage"]["completion_tokens"].as_u64().unwrap() as usize,
            want.new_tokens
        );

        let ids = model.tokenizer.encode(question).unwrap();
        let raw =
            tunelab::generate::generate(&model, &ids, &options, &cancel, &mut |_| {}).unwrap();
        let got = s.ok(
            "/v1/completions",
            &json!({"prompt": question, "max_tokens": 20, "temperature": 0}),
        );
        assert_eq!(got["choices"][0]["text"].as_str().unwrap(), raw.text);
    }
}

/// Eight concurrent requests, some for the base and some for two adapters, each get the answer
/// they get alone: a row's numbers never depend on the rest of the batch.
#[test]
fn concurrent_requests_with_mixed_adapters_each_equal_their_answer_alone() {
    let (a, b) = (temp("serve_adapter_a"), temp("serve_adapter_b"));
    noise_adapter("tiny", &a, 1);
    noise_adapter("tiny", &b, 2);
    let lora_a = format!("a={}", a.display());
    let lora_b = format!("b={}", b.display());
    let s = Server::start(
        "tiny",
        &["--parallel", "8", "--lora", &lora_a, "--lora", &lora_b],
    );
    let models = s.get("/v1/models").unwrap().json().unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["tiny", "a", "b"]);
    assert_eq!(models["data"][1]["parent"], "tiny");
    let requests: Vec<Value> = (0..8)
        .map(|i| {
            let target = ["tiny", "a", "b"][i % 3];
            let mut body = chat(target, &format!("question number {i}: why?"), 16 + 4 * i);
            if i == 5 {
                // A sampled request, seeded: reproducible too.
                body["temperature"] = json!(0.9);
                body["seed"] = json!(42);
            }
            body
        })
        .collect();
    let alone: Vec<String> = requests
        .iter()
        .map(|b| {
            s.ok("/v1/chat/completions", b)["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    // The adapters change the answers (else this test would prove little).
    assert_ne!(
        alone[0],
        s.ok("/v1/chat/completions", &{
            let mut b = requests[0].clone();
            b["model"] = json!("a");
            b
        })["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
    );
    for _round in 0..2 {
        let together: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = requests
                .iter()
                .map(|b| {
                    scope.spawn(|| {
                        s.ok("/v1/chat/completions", b)["choices"][0]["message"]["content"]
                            .as_str()
                            .unwrap()
                            .to_string()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(together, alone);
    }
}

/// A stop string that starts inside one token and ends inside the next: cut exactly, never
/// leaked into a stream, and the text before it kept.
#[test]
fn a_stop_string_split_across_tokens_is_cut_exactly() {
    let s = Server::start("tiny", &[]);
    let body =
        json!({"prompt": "The quick brown fox", "max_tokens": 40, "temperature": 0, "logprobs": 0});
    let r = s.ok("/v1/completions", &body);
    let text = r["choices"][0]["text"].as_str().unwrap().to_string();
    let tokens: Vec<String> = r["choices"][0]["logprobs"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    // Find two neighbouring tokens of clean text, and take the end of one and the start of the next.
    let mut offset = 0;
    let mut stop = None;
    for w in tokens.windows(2) {
        let (x, y) = (&w[0], &w[1]);
        let clean = |t: &str| !t.contains('\u{fffd}') && t.chars().count() >= 2;
        if clean(x) && clean(y) && text[offset..].starts_with(&format!("{x}{y}")) {
            let tail: String = x
                .chars()
                .rev()
                .take(1)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let head: String = y.chars().take(1).collect();
            stop = Some(format!("{tail}{head}"));
            break;
        }
        offset += x.len();
    }
    let stop = stop.expect("two clean neighbouring tokens in the answer");
    let cut = text.find(&stop).unwrap();
    let mut b = body.clone();
    b["stop"] = json!([stop.clone(), "a string that never comes"]);
    b.as_object_mut().unwrap().remove("logprobs");
    let r = s.ok("/v1/completions", &b);
    assert_eq!(r["choices"][0]["text"].as_str().unwrap(), &text[..cut]);
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    b["stream"] = json!(true);
    let events = s.stream("/v1/completions", &b);
    assert_eq!(streamed_text(&events), &text[..cut]);
}

/// A client that hangs up mid-stream, or while waiting in the queue, frees its place at once.
#[test]
fn a_client_that_disconnects_frees_its_slot() {
    let s = Server::start("tiny", &["--parallel", "1", "--ctx", "4096"]);
    let mut long = chat("tiny", "tell me everything", 2000);
    // Never an end token: the answer runs to its budget unless the server drops it.
    long["ignore_eos"] = json!(true);
    let mut stream_body = long.clone();
    stream_body["stream"] = json!(true);
    // Mid-stream: read a few events, then hang up.
    let st = stream_started(&s.url, &stream_body);
    assert_eq!(s.metric("tunelab_active_sequences"), 1.0);
    drop(st);
    served_at_once(&s, 1.0);

    // Non-streaming, and one that leaves while queued behind it: both gone before they run.
    let busy = std::thread::spawn({
        let url = s.url.clone();
        let body = stream_body.clone();
        move || {
            let _st = stream_started(&url, &body);
            std::thread::sleep(Duration::from_millis(600));
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let queued = client::request(
        "POST",
        &format!("{}/v1/chat/completions", s.url),
        &[],
        Some(long.to_string().as_bytes()),
        Duration::from_millis(200),
    );
    assert!(
        queued.is_err(),
        "the queued request timed out on the client side"
    );
    busy.join().unwrap();
    served_at_once(&s, 3.0);
}

/// A streamed chat request to `url` whose first events have arrived.
fn stream_started(url: &str, body: &Value) -> client::Streaming {
    let mut st = client::open(
        "POST",
        &format!("{url}/v1/chat/completions"),
        &[],
        Some(body.to_string().as_bytes()),
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(st.status, 200);
    for _ in 0..3 {
        st.next_line().unwrap();
    }
    st
}

/// The next request is served at once: the slot of a departed client was freed, no sequence is
/// left running, and at least `cancelled` sequences were dropped so far.
fn served_at_once(s: &Server, cancelled: f64) {
    let start = Instant::now();
    s.ok("/v1/chat/completions", &chat("tiny", "hi", 4));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "waited {:?}",
        start.elapsed()
    );
    assert_eq!(s.metric("tunelab_active_sequences"), 0.0);
    assert!(s.metric("tunelab_requests_cancelled_total") >= cancelled);
}

/// Every malformed request gets a 4xx OpenAI error object, and the server stays up.
#[test]
fn two_hundred_malformed_requests_each_get_an_error_object() {
    let s = Server::start("tiny", &[]);
    let paths = [
        "/v1/chat/completions",
        "/v1/completions",
        "/tokenize",
        "/detokenize",
        "/apply-template",
    ];
    let mut requests: Vec<(&str, Vec<u8>)> = Vec::new();
    let raw: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"[]".to_vec(),
        b"null".to_vec(),
        b"42".to_vec(),
        b"\"x\"".to_vec(),
        b"{\"messages\": \xff\xfe}".to_vec(),
        b"\xc3\x28".to_vec(),
        b"{\"messages\":[{\"role\":\"user\",\"content\":\"\xe2\x82\"}]}".to_vec(),
        b"{}{}".to_vec(),
        b"{\"a\":1,}".to_vec(),
        vec![b'['; 5000],
        b"{}".to_vec(),
    ];
    for body in &raw {
        for path in paths {
            requests.push((path, body.clone()));
        }
    }
    // Per field, values that are wrong for it.
    let many_stops: Vec<String> = (0..17).map(|i| format!("s{i}")).collect();
    let bad: Vec<(&str, Vec<Value>)> = vec![
        (
            "messages",
            vec![
                json!(-1),
                json!(1e308),
                json!("x"),
                json!([]),
                json!({}),
                json!(true),
                json!([1, [2]]),
                json!([123]),
                json!([{}]),
                json!([{"role": 1}]),
                json!([{"role": "user"}]),
                json!([{"role": "user", "content": 5}]),
                json!([{"role": "wizard", "content": "x"}]),
                json!([{"role": "system", "content": "x"}]),
                json!([{"role": "user", "content": [{"type": "image_url"}]}]),
                json!([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]),
                json!(null),
            ],
        ),
        (
            "max_tokens",
            vec![
                json!(0),
                json!(-1),
                json!(1.5),
                json!(1e308),
                json!(18446744073709551615u64),
                json!("8"),
                json!([]),
                json!(100000000),
            ],
        ),
        (
            "max_completion_tokens",
            vec![json!(0), json!("x"), json!(-5)],
        ),
        (
            "temperature",
            vec![
                json!(-1),
                json!(3),
                json!("x"),
                json!([]),
                json!(true),
                json!(1e308),
            ],
        ),
        (
            "top_p",
            vec![json!(-0.5), json!(1.5), json!(0), json!("x"), json!({})],
        ),
        (
            "top_k",
            vec![json!(-2), json!(1.5), json!(1e308), json!("x")],
        ),
        ("min_p", vec![json!(-1), json!(2), json!("x")]),
        (
            "repetition_penalty",
            vec![json!(0), json!(-1), json!(1e308), json!("x")],
        ),
        ("presence_penalty", vec![json!(3), json!(-3), json!("x")]),
        ("frequency_penalty", vec![json!(3), json!(-3), json!([])]),
        (
            "seed",
            vec![json!(1.5), json!("x"), json!([]), json!(1e308)],
        ),
        (
            "stop",
            vec![
                json!(1),
                json!([1]),
                json!({}),
                json!(true),
                json!([[]]),
                json!(many_stops),
            ],
        ),
        ("stream", vec![json!("x"), json!(1), json!([]), json!({})]),
        (
            "stream_options",
            vec![
                json!("x"),
                json!(1),
                json!({"include_usage": true}),
                json!([]),
            ],
        ),
        ("logprobs", vec![json!("x"), json!(1), json!([])]),
        (
            "top_logprobs",
            vec![json!(-1), json!(21), json!("x"), json!(2)],
        ),
        ("n", vec![json!(2), json!(0), json!(-1), json!("x")]),
        ("model", vec![json!(1), json!([]), json!({}), json!("nope")]),
        ("tools", vec![json!([{"type": "function"}]), json!("x")]),
        (
            "tool_choice",
            vec![json!("required"), json!({"type": "function"})],
        ),
        (
            "response_format",
            vec![
                json!({"type": "json_object"}),
                json!({"type": "json_schema"}),
                json!("x"),
                json!(1),
            ],
        ),
        ("logit_bias", vec![json!({"5": 10})]),
    ];
    let base = chat("tiny", "hi", 2);
    for (field, values) in &bad {
        for v in values {
            let mut b = base.clone();
            b[*field] = v.clone();
            requests.push(("/v1/chat/completions", b.to_string().into_bytes()));
        }
    }
    // The same broken conversations through the template endpoint.
    for m in &bad[0].1 {
        requests.push((
            "/apply-template",
            json!({"messages": m}).to_string().into_bytes(),
        ));
    }
    for prompt in [
        json!(null),
        json!(1),
        json!({}),
        json!([]),
        json!(["a", "b"]),
        json!([-1]),
        json!([1.5]),
        json!([[1]]),
        json!(true),
        json!([99999999]),
    ] {
        requests.push((
            "/v1/completions",
            json!({"prompt": prompt, "max_tokens": 2})
                .to_string()
                .into_bytes(),
        ));
    }
    for extra in [
        json!({"echo": true}),
        json!({"suffix": "x"}),
        json!({"logprobs": 6}),
        json!({"logprobs": true}),
        json!({"best_of": 3}),
    ] {
        let mut b = json!({"prompt": "hi", "max_tokens": 2});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        requests.push(("/v1/completions", b.to_string().into_bytes()));
    }
    for tokens in [
        json!(null),
        json!("x"),
        json!([-1]),
        json!([1.5]),
        json!([99999999]),
        json!({}),
    ] {
        requests.push((
            "/detokenize",
            json!({"tokens": tokens}).to_string().into_bytes(),
        ));
    }
    assert!(requests.len() >= 200, "{} requests", requests.len());
    for (path, body) in &requests {
        let r = s.post_raw(path, &[], body);
        let shown = String::from_utf8_lossy(body);
        assert!(
            (400..500).contains(&r.status),
            "{path} {shown} → {} {}",
            r.status,
            r.text()
        );
        let e = r
            .json()
            .unwrap_or_else(|_| panic!("{path} {shown}: not JSON: {}", r.text()));
        let err = &e["error"];
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{e}"
        );
        assert!(
            err["type"].is_string() && err.get("param").is_some() && err.get("code").is_some(),
            "{e}"
        );
    }
    assert_eq!(s.get("/health").unwrap().status, 200);
    // Unknown paths and methods are error objects too.
    let r = s.get("/v2/nothing").unwrap();
    assert_eq!(
        (r.status, r.json().unwrap()["error"]["type"].as_str()),
        (404, Some("not_found_error"))
    );
    assert_eq!(s.get("/v1/chat/completions").unwrap().status, 405);
    let r = s.post("/v1/chat/completions", &chat("nope", "hi", 2));
    assert_eq!(
        (r.status, r.json().unwrap()["error"]["param"].as_str()),
        (404, Some("model"))
    );
}

#[test]
fn api_key_cors_body_limit_context_and_queue() {
    let s = Server::start(
        "tiny",
        &[
            "--api-key",
            "sk-test",
            "--cors",
            "http://app.example",
            "--max-body",
            "2000",
            "--ctx",
            "2048",
            "--parallel",
            "1",
            "--queue",
            "1",
            "--keep-alive",
            "0.2",
        ],
    );
    let url = |p: &str| format!("{}{p}", s.url);
    let body = chat("tiny", "hi", 4).to_string();
    let send = |headers: &[(&str, &str)], b: &str| {
        client::request(
            "POST",
            &url("/v1/chat/completions"),
            headers,
            Some(b.as_bytes()),
            TIMEOUT,
        )
        .unwrap()
    };
    // Key: missing or wrong → 401 authentication_error; right → 200; /health is public.
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong")],
        vec![("Authorization", "sk-test")],
    ] {
        let r = send(&headers, &body);
        assert_eq!(r.status, 401);
        assert_eq!(r.json().unwrap()["error"]["type"], "authentication_error");
    }
    let key = [("Authorization", "Bearer sk-test")];
    assert_eq!(send(&key, &body).status, 200);
    assert_eq!(s.get("/health").unwrap().status, 200);
    assert_eq!(s.get("/metrics").unwrap().status, 401);
    // CORS: a preflight from an allowed origin is answered before the key check; others are not allowed.
    let preflight = |origin: &str| {
        client::request(
            "OPTIONS",
            &url("/v1/chat/completions"),
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                (
                    "Access-Control-Request-Headers",
                    "authorization,content-type",
                ),
            ],
            None,
            TIMEOUT,
        )
        .unwrap()
    };
    let ok = preflight("http://app.example");
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("http://app.example")
    );
    assert_eq!(
        preflight("http://evil.example").header("access-control-allow-origin"),
        None
    );
    // Body limit → 413 with an error object.
    let big = json!({"messages": [{"role": "user", "content": "x".repeat(3000)}]}).to_string();
    let r = send(&key, &big);
    assert_eq!(r.status, 413);
    assert!(r.json().unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("2000"));
    // Context: prompt + max_tokens beyond --ctx 2048.
    let r = send(&key, &chat("tiny", "hi", 3000).to_string());
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json().unwrap()["error"]["code"],
        "context_length_exceeded"
    );
    // Queue: one running, one waiting (its stream sends pings while it waits), the third → 503.
    // The running one would take thousands of steps (no end token), so it is still running when
    // the third arrives; it leaves when its client hangs up, and the waiting one's turn comes.
    let running = json!({"model": "tiny", "stream": true, "temperature": 0, "max_tokens": 2000,
        "ignore_eos": true, "messages": [{"role": "user", "content": "go"}]})
    .to_string();
    let long = json!({"model": "tiny", "stream": true, "temperature": 0, "max_tokens": 40,
        "messages": [{"role": "user", "content": "go"}]})
    .to_string();
    let open = |b: &str| {
        client::open(
            "POST",
            &url("/v1/chat/completions"),
            &key,
            Some(b.as_bytes()),
            TIMEOUT,
        )
        .unwrap()
    };
    // Each request is sent once the engine has taken the one before it (the queue holds one).
    let gauge_reaches = |name: &str, want: f64| {
        let start = Instant::now();
        let reading = || {
            let text = client::request("GET", &url("/metrics"), &key, None, TIMEOUT)
                .unwrap()
                .text();
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        };
        while reading() != Some(want) {
            assert!(start.elapsed() < TIMEOUT, "{name} never reached {want}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let running = open(&running);
    assert_eq!(running.status, 200, "the long request is accepted");
    gauge_reaches("tunelab_active_sequences", 1.0);
    let mut waiting = open(&long);
    gauge_reaches("tunelab_queue_depth", 1.0);
    let r = send(&key, &body);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json().unwrap()["error"]["type"], "unavailable_error");
    drop(running);
    // The waiting stream sees its role chunk, then pings or text, and finishes once its turn comes.
    let mut lines = Vec::new();
    while let Some(l) = waiting.next_line().unwrap() {
        lines.push(l);
    }
    assert_eq!(
        lines
            .iter()
            .rev()
            .find(|l| !l.is_empty())
            .map(String::as_str),
        Some("data: [DONE]")
    );
}

/// `/health` answers 503 with an error object while the model loads, then 200.
#[test]
fn health_is_503_while_loading() {
    let options = tunelab::serve::ServeOptions {
        port: 0,
        ..Default::default()
    };
    let running = tunelab::serve::start(
        options,
        Box::new(|| {
            std::thread::sleep(Duration::from_millis(700));
            let model = tunelab::model::load("tiny", &Default::default())?;
            tunelab::serve::Served::new(model, "tiny", &[], None)
        }),
    )
    .unwrap();
    let health = |path: &str| {
        client::request(
            "GET",
            &format!("{}{path}", running.url()),
            &[],
            None,
            TIMEOUT,
        )
        .unwrap()
    };
    let r = health("/health");
    assert_eq!(r.status, 503);
    assert_eq!(r.json().unwrap()["error"]["type"], "unavailable_error");
    assert_eq!(health("/v1/models").status, 503);
    running
        .wait_ready(&tunelab::cancel::CancelToken::new())
        .unwrap();
    assert_eq!(health("/health").status, 200);
    running.stop();
}
