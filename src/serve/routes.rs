//! The HTTP endpoints (axum): each handler reads and checks its request, writes the prompt with
//! the target's template, queues a job for the engine, and turns the engine's events into an
//! OpenAI answer — whole, or as server-sent events. Every failure is an [`ApiError`].

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::engine::{Event, Finish, Job, TokenLogprob};
use super::error::{ApiError, ApiResult};
use super::protocol::{self, Fields, Prompt};
use super::registry::Target;
use super::responses::Shape;
use super::{Ready, Shared};
use crate::generate::GenerateOptions;

/// The router over `shared`.
pub fn router(shared: Arc<Shared>) -> Router {
    let limit = shared.options.body_limit;
    let mut app = Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model_card))
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/completions", post(completions))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/apply-template", post(apply_template))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(shared.clone(), authorize))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(shared.clone());
    if !shared.options.cors.is_empty() {
        // Outermost, so a browser's preflight is answered before the key is checked.
        let origins: Vec<_> = shared
            .options
            .cors
            .iter()
            .filter_map(|o| o.parse().ok())
            .collect();
        app = app.layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
        );
    }
    app
}

/// Every endpoint but `/health` needs the key, when one is set; answers with an error status
/// are counted.
async fn authorize(State(s): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    if let Some(key) = &s.options.api_key {
        if request.uri().path() != "/health" {
            let given = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            if !given.is_some_and(|g| same_key(g.as_bytes(), key.as_bytes())) {
                s.metrics.errors.fetch_add(1, Ordering::Relaxed);
                let what = if given.is_some() {
                    "Invalid API key"
                } else {
                    "Missing API key"
                };
                return ApiError::unauthorized(format!(
                    "{what}: send the header 'Authorization: Bearer KEY' with the server's --api-key"
                ))
                .into_response();
            }
        }
    }
    let response = next.run(request).await;
    if response.status().is_client_error() || response.status().is_server_error() {
        s.metrics.errors.fetch_add(1, Ordering::Relaxed);
    }
    response
}

/// Compare keys in time that does not depend on where they differ.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(
        None,
        format!("no endpoint {} {}: see GET /v1/models, POST /v1/chat/completions, POST /v1/completions", request.method(), request.uri().path()),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::invalid(
        None,
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
    .with_status(StatusCode::METHOD_NOT_ALLOWED)
}

/// The body, or a 413 when it is over the limit.
fn body(s: &Shared, body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::invalid(
                None,
                format!(
                    "the request body is larger than the server's limit of {} bytes (--max-body)",
                    s.options.body_limit
                ),
            )
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
        } else {
            ApiError::invalid(
                None,
                format!("could not read the request body: {}", r.body_text()),
            )
        }
    })
}

async fn health(State(s): State<Arc<Shared>>) -> Response {
    s.metrics.other_requests.fetch_add(1, Ordering::Relaxed);
    match s.ready() {
        Ok(_) => (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response(),
        Err(e) => e.into_response(),
    }
}

fn card(id: &str, root: &str, parent: Option<&str>, created: u64) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": "tunelab", "root": root, "parent": parent})
}

fn cards(r: &Ready) -> Vec<Value> {
    let s = &r.served;
    std::iter::once(card(&s.name, &s.root, None, s.created))
        .chain(
            s.adapters
                .iter()
                .map(|a| card(&a.name, &a.root, Some(&s.name), s.created)),
        )
        .collect()
}

async fn models(State(s): State<Arc<Shared>>) -> ApiResult<Response> {
    s.metrics.other_requests.fetch_add(1, Ordering::Relaxed);
    let r = s.ready()?;
    Ok(axum::Json(json!({"object": "list", "data": cards(r)})).into_response())
}

async fn model_card(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> ApiResult<Response> {
    s.metrics.other_requests.fetch_add(1, Ordering::Relaxed);
    let r = s.ready()?;
    cards(r)
        .into_iter()
        .find(|c| c["id"] == id.as_str())
        .map(|c| axum::Json(c).into_response())
        .ok_or_else(|| unknown_model(r, &id))
}

fn unknown_model(r: &Ready, name: &str) -> ApiError {
    ApiError::not_found(
        Some("model"),
        format!(
            "The model `{name}` does not exist. This server has: {}",
            r.served.names().join(", ")
        ),
    )
    .with_code("model_not_found")
}

/// The target a request's `model` names (empty: the base).
fn target(r: &Ready, model: &str) -> ApiResult<Target> {
    if model.is_empty() {
        return Ok(None);
    }
    r.served.find(model).ok_or_else(|| unknown_model(r, model))
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    s.metrics.other_requests.fetch_add(1, Ordering::Relaxed);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn chat(
    State(s): State<Arc<Shared>>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    s.metrics.chat_requests.fetch_add(1, Ordering::Relaxed);
    let r = s.ready()?;
    let req = protocol::chat(&body(&s, b)?)?;
    let target = target(r, &req.model)?;
    generate(&s, r, req, target, true).await
}

async fn completions(
    State(s): State<Arc<Shared>>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    s.metrics
        .completion_requests
        .fetch_add(1, Ordering::Relaxed);
    let r = s.ready()?;
    let req = protocol::completion(&body(&s, b)?)?;
    let target = target(r, &req.model)?;
    generate(&s, r, req, target, false).await
}

/// The prompt text a chat writes for `target`.
fn chat_prompt(
    r: &Ready,
    target: Target,
    system: &str,
    messages: &[crate::data::Message],
) -> ApiResult<String> {
    r.served
        .template(target)
        .prompt(system, messages, &r.served.model)
        .map_err(|e| {
            ApiError::field(
                "messages",
                format!("the chat template could not write these messages: {e}"),
            )
        })
}

/// The token ids of `prompt` for `target`.
fn prompt_ids(r: &Ready, target: Target, prompt: &Prompt) -> ApiResult<Vec<u32>> {
    let model = &r.served.model;
    let encode = |text: &str| {
        model
            .tokenizer
            .encode(text)
            .map_err(|e| ApiError::invalid(None, format!("could not tokenize the prompt: {e}")))
    };
    match prompt {
        Prompt::Chat { system, messages } => encode(&chat_prompt(r, target, system, messages)?),
        Prompt::Text(text) => encode(text),
        Prompt::Tokens(ids) => {
            let vocab = model.config().vocab_size;
            if let Some((i, id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
                return Err(ApiError::field(
                    "prompt",
                    format!("'prompt[{i}]' = {id} is not a token id (the vocabulary has {vocab})"),
                ));
            }
            Ok(ids.clone())
        }
    }
}

/// Queue the request and answer with its result.
async fn generate(
    s: &Arc<Shared>,
    r: &Ready,
    req: protocol::Request,
    target: Target,
    chat: bool,
) -> ApiResult<Response> {
    let ids = prompt_ids(r, target, &req.prompt)?;
    if ids.is_empty() {
        return Err(ApiError::field(
            "prompt",
            "the prompt is empty: give at least one token",
        ));
    }
    let context = r.context;
    let room = context.saturating_sub(ids.len());
    let max_tokens = req.max_tokens.unwrap_or(room);
    if ids.len() + max_tokens > context || room == 0 {
        return Err(ApiError::field(
            if req.max_tokens.is_some() { "max_tokens" } else { "messages" },
            format!(
                "This model's maximum context length is {context} tokens. However, you requested {} tokens ({} in the prompt, {max_tokens} for the completion). Shorten the prompt or lower max_tokens.",
                ids.len() + max_tokens,
                ids.len()
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let mut sampling = req.sampling.clone();
    if !req.seed_given {
        sampling.seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    }
    // A chat ends at its template's stop words too (unless asked to ignore end tokens).
    let stop_ids = if chat && !req.ignore_eos {
        r.served.template(target).stop_ids(&r.served.model)
    } else {
        Vec::new()
    };
    let options = GenerateOptions {
        max_new_tokens: max_tokens,
        sampling,
        stop_strings: req.stop.clone(),
        stop_ids,
        adapter: None,
    };
    let (tx, events) = mpsc::unbounded_channel();
    let job = Job {
        prompt: ids,
        options,
        target,
        logprobs: req.logprobs,
        ignore_eos: req.ignore_eos,
        deadline: Instant::now() + s.options.timeout,
        events: tx,
    };
    // Count the job as waiting before it can be taken, so the gauge never goes below zero.
    s.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = r.jobs.try_send(job) {
        s.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        return Err(match e {
            std::sync::mpsc::TrySendError::Full(_) => ApiError::unavailable(format!(
                "the server is busy: {} requests are already waiting (--queue {}); retry later",
                s.options.queue, s.options.queue
            )),
            std::sync::mpsc::TrySendError::Disconnected(_) => {
                ApiError::unavailable("the engine has stopped")
            }
        });
    }
    let shape = Shape::new(
        chat,
        if req.model.is_empty() {
            &r.served.name
        } else {
            &req.model
        },
    );
    if req.stream {
        Ok(stream(
            shape,
            events,
            req.include_usage,
            req.logprobs.is_some(),
            s.options.keep_alive,
        ))
    } else {
        whole(shape, events, req.logprobs.is_some()).await
    }
}

/// Wait for the whole answer. If the client leaves, this future is dropped, and with it the
/// receiver: the engine sees the closed channel and drops the sequence.
async fn whole(
    shape: Shape,
    mut events: mpsc::UnboundedReceiver<Event>,
    logprobs: bool,
) -> ApiResult<Response> {
    let mut text = String::new();
    let mut entries: Vec<TokenLogprob> = Vec::new();
    loop {
        match events.recv().await {
            Some(Event::Text {
                text: t,
                logprobs: l,
            }) => {
                text.push_str(&t);
                entries.extend(l);
            }
            Some(Event::Done(finish)) => {
                let v = shape.full(&text, logprobs.then_some(&entries[..]), &finish);
                return Ok(axum::Json(v).into_response());
            }
            Some(Event::Failed(e)) => return Err(e),
            None => {
                return Err(ApiError::server(
                    "the engine stopped before the answer was complete",
                ))
            }
        }
    }
}

/// One server-sent event.
fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// Stream the answer as server-sent events, with `: ping` comments while nothing else is sent.
fn stream(
    shape: Shape,
    mut events: mpsc::UnboundedReceiver<Event>,
    include_usage: bool,
    logprobs: bool,
    keep_alive: Duration,
) -> Response {
    let (out, body) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        if let Some(first) = shape.first_chunk() {
            if out.send(Ok(sse(&first))).await.is_err() {
                return;
            }
        }
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive);
        let mut offset = 0;
        loop {
            let bytes = tokio::select! {
                event = events.recv() => match event {
                    Some(Event::Text { text, logprobs: l }) => {
                        sse(&shape.text_chunk(&text, logprobs.then_some(&l[..]), &mut offset))
                    }
                    Some(Event::Done(finish)) => {
                        let _ = out.send(Ok(done_events(&shape, &finish, include_usage))).await;
                        return;
                    }
                    Some(Event::Failed(e)) => {
                        let _ = out.send(Ok(sse(&e.body()))).await;
                        return;
                    }
                    None => {
                        let e = ApiError::server("the engine stopped before the answer was complete");
                        let _ = out.send(Ok(sse(&e.body()))).await;
                        return;
                    }
                },
                _ = ping.tick() => Bytes::from_static(b": ping\n\n"),
            };
            // A failed send means the client left: returning drops `events`, which the engine
            // notices before its next step.
            if out.send(Ok(bytes)).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(body),
        ))
        .unwrap_or_else(|_| ApiError::server("could not start the stream").into_response())
}

/// The closing chunk, the usage chunk when asked for, and `[DONE]`.
fn done_events(shape: &Shape, finish: &Finish, include_usage: bool) -> Bytes {
    let mut text = format!("data: {}\n\n", shape.final_chunk(finish));
    if include_usage {
        text.push_str(&format!("data: {}\n\n", shape.usage_chunk(finish)));
    }
    text.push_str("data: [DONE]\n\n");
    Bytes::from(text)
}

/// The start of a native endpoint (`/tokenize`, ...): count it, check the server is ready,
/// and read the body as a JSON object.
fn native_request(
    s: &Shared,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<(&Ready, serde_json::Map<String, Value>)> {
    s.metrics.other_requests.fetch_add(1, Ordering::Relaxed);
    let r = s.ready()?;
    Ok((r, protocol::object(&body(s, b)?)?))
}

/// `/tokenize`: `{content | prompt | messages, with_pieces?, model?}` → `{tokens, count,
/// max_model_len}` (llama.cpp's and vLLM's fields); with pieces, each token is `{id, piece}`.
async fn tokenize(
    State(s): State<Arc<Shared>>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let (r, map) = native_request(&s, b)?;
    let f = Fields(&map);
    let target = target(r, f.string("model")?.unwrap_or(""))?;
    let text = match (
        f.string("content")?,
        f.string("prompt")?,
        map.get("messages"),
    ) {
        (Some(t), _, _) | (None, Some(t), _) => t.to_string(),
        (None, None, Some(m)) if !m.is_null() => {
            let (system, messages) = protocol::messages(Some(m))?;
            chat_prompt(r, target, &system, &messages)?
        }
        _ => {
            return Err(ApiError::field(
                "content",
                "give 'content' (or 'prompt') text, or 'messages'",
            ))
        }
    };
    let ids = prompt_ids(r, target, &Prompt::Text(text))?;
    let tokens: Vec<Value> = if f.bool("with_pieces")?.unwrap_or(false) {
        ids.iter()
            .map(|&id| {
                let piece = r
                    .served
                    .model
                    .tokenizer
                    .decode(&[id], false)
                    .unwrap_or_default();
                json!({"id": id, "piece": piece})
            })
            .collect()
    } else {
        ids.iter().map(|&id| json!(id)).collect()
    };
    Ok(
        axum::Json(json!({"tokens": tokens, "count": ids.len(), "max_model_len": r.context}))
            .into_response(),
    )
}

/// `/detokenize`: `{tokens}` → `{content, prompt}` (llama.cpp's and vLLM's names).
async fn detokenize(
    State(s): State<Arc<Shared>>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let (r, map) = native_request(&s, b)?;
    let ids = match map.get("tokens") {
        Some(Value::Array(items)) => match protocol::token_ids(items) {
            Ok(ids) => ids,
            Err(_) => {
                return Err(ApiError::field(
                    "tokens",
                    "'tokens' must be a list of token ids (whole numbers ≥ 0)",
                ))
            }
        },
        _ => {
            return Err(ApiError::field(
                "tokens",
                "'tokens' is required: a list of token ids",
            ))
        }
    };
    let vocab = r.served.model.config().vocab_size;
    if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(ApiError::field(
            "tokens",
            format!("{id} is not a token id (the vocabulary has {vocab})"),
        ));
    }
    let text = r
        .served
        .model
        .tokenizer
        .decode(&ids, false)
        .map_err(|e| ApiError::field("tokens", e.to_string()))?;
    Ok(axum::Json(json!({"content": text, "prompt": text})).into_response())
}

/// `/apply-template`: `{messages, model?}` → `{prompt}`, the text a chat request would send.
async fn apply_template(
    State(s): State<Arc<Shared>>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let (r, map) = native_request(&s, b)?;
    let target = target(r, Fields(&map).string("model")?.unwrap_or(""))?;
    let (system, messages) = protocol::messages(map.get("messages"))?;
    let prompt = chat_prompt(r, target, &system, &messages)?;
    Ok(axum::Json(json!({"prompt": prompt})).into_response())
}
