//! The engine thread: it owns the KV caches and runs every sequence. Requests arrive as [`Job`]s
//! through a bounded queue; up to `parallel` sequences run at once. A new sequence's prompt is
//! processed on its own (in chunks, checking between them whether its client is still there);
//! then all running sequences decode **together, one batch per step**
//! ([`crate::model::Llama::decode_batch`]), and a sequence joins or leaves between steps
//! (continuous batching). Each step's text goes back through the job's channel; a closed channel
//! means the client went away, and the sequence is dropped before the next step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use tokio::sync::mpsc::UnboundedSender;

use super::error::ApiError;
use super::metrics::Metrics;
use super::registry::{Served, Target};
use crate::error::Result;
use crate::generate::sequence::Sequence;
use crate::generate::GenerateOptions;
use crate::model::decode_batch::DecodeRow;
use crate::model::{KvCache, Logits};

/// Prompts are processed this many tokens at a time; a client that leaves is noticed between
/// chunks.
const PREFILL_CHUNK: usize = 512;

/// One request for the engine.
pub struct Job {
    pub prompt: Vec<u32>,
    /// Sampling, stop strings and ids, token budget (its `adapter` is unused: see `target`).
    pub options: GenerateOptions,
    pub target: Target,
    /// Log-probabilities with this many alternatives per token (None: off).
    pub logprobs: Option<usize>,
    /// Generate past the model's end tokens.
    pub ignore_eos: bool,
    /// When the request gives up (queue time included).
    pub deadline: Instant,
    pub events: UnboundedSender<Event>,
}

/// One generated token's log-probability and the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

/// How a sequence ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    /// `stop` or `length`.
    pub reason: &'static str,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub prompt_ms: f64,
    pub predicted_ms: f64,
}

/// What the engine sends back.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Text that became final (never a broken character, never part of a stop string), and the
    /// log-probabilities of the tokens generated since the last event, when asked for.
    Text {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    Done(Finish),
    Failed(ApiError),
}

/// A running sequence.
struct Active {
    job: Job,
    sequence: Sequence,
    cache: KvCache,
    /// The token to feed at the next step.
    next: u32,
    logprobs: Vec<TokenLogprob>,
    prompt_ms: f64,
    decode_start: Instant,
}

/// The engine's settings and shared state.
pub struct Engine {
    pub served: Arc<Served>,
    pub parallel: usize,
    /// The context length sequences may fill.
    pub context: usize,
    pub metrics: Arc<Metrics>,
    pub stopping: Arc<AtomicBool>,
}

impl Engine {
    /// Run until the queue's senders are gone or `stopping` is set.
    pub fn run(&self, jobs: Receiver<Job>) {
        let mut active: Vec<Active> = Vec::new();
        loop {
            if self.stopping.load(Ordering::Relaxed) {
                for a in active {
                    let _ = a.job.events.send(Event::Failed(ApiError::unavailable(
                        "the server is shutting down",
                    )));
                }
                return;
            }
            // Admit waiting requests into free slots (waiting a little when idle).
            while active.len() < self.parallel {
                let job = if active.is_empty() {
                    match jobs.recv_timeout(Duration::from_millis(50)) {
                        Ok(job) => job,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                } else {
                    match jobs.try_recv() {
                        Ok(job) => job,
                        Err(_) => break,
                    }
                };
                self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                // Counted before its first token goes out, so a client never sees its own
                // sequence missing from the gauge.
                self.set_active(active.len() + 1);
                if let Some(a) = self.start(job) {
                    active.push(a);
                }
                self.set_active(active.len());
            }
            active.retain(|a| self.still_wanted(a));
            self.set_active(active.len());
            if active.is_empty() {
                continue;
            }
            let logits = {
                let mut rows: Vec<DecodeRow> = active
                    .iter_mut()
                    .map(|a| DecodeRow {
                        token: a.next,
                        adapter: self.served.adapter(a.job.target),
                        cache: &mut a.cache,
                    })
                    .collect();
                self.served.model.llama.decode_batch(&mut rows)
            };
            match logits {
                Ok(logits) => {
                    self.metrics.generated(logits.len() as u64);
                    // One row of logits per sequence, in order; a finished one leaves.
                    let mut rows = logits.iter();
                    active.retain_mut(|a| rows.next().is_some_and(|row| !self.advance(a, row)));
                }
                Err(e) => {
                    for a in active.drain(..) {
                        let _ = a.job.events.send(Event::Failed(ApiError::server(format!(
                            "decoding failed: {e}"
                        ))));
                    }
                }
            }
            self.set_active(active.len());
        }
    }

    fn set_active(&self, n: usize) {
        self.metrics.active.store(n as i64, Ordering::Relaxed);
    }

    /// Whether `a`'s client is still there and its deadline not passed.
    fn still_wanted(&self, a: &Active) -> bool {
        if a.job.events.is_closed() {
            self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if Instant::now() > a.job.deadline {
            let _ = a.job.events.send(Event::Failed(timed_out()));
            return false;
        }
        true
    }

    /// Process `job`'s prompt and take its first token; None when it ended already (finished,
    /// failed, or its client left).
    fn start(&self, job: Job) -> Option<Active> {
        let start = Instant::now();
        let model = &self.served.model;
        let model_stops: &[u32] = if job.ignore_eos { &[] } else { &model.stop_ids };
        let sequence = Sequence::new(&job.prompt, &job.options, model_stops, self.context);
        let mut cache = KvCache::default();
        let adapter = self.served.adapter(job.target);
        let mut logits = None;
        for chunk in job.prompt.chunks(PREFILL_CHUNK) {
            if job.events.is_closed() {
                self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            if Instant::now() > job.deadline {
                let _ = job.events.send(Event::Failed(timed_out()));
                return None;
            }
            let mut run = || -> Result<Vec<f32>> {
                let ids = Tensor::new(chunk, &model.llama.device)?.unsqueeze(0)?;
                let l =
                    model
                        .llama
                        .forward_in_pool(&ids, Some(&mut cache), Logits::Last, adapter)?;
                Ok(l.flatten_all()?.to_vec1()?)
            };
            match run() {
                Ok(l) => logits = Some(l),
                Err(e) => {
                    let _ = job.events.send(Event::Failed(ApiError::server(format!(
                        "processing the prompt failed: {e}"
                    ))));
                    return None;
                }
            }
        }
        self.metrics
            .prompt_tokens
            .fetch_add(job.prompt.len() as u64, Ordering::Relaxed);
        let prompt_ms = start.elapsed().as_secs_f64() * 1e3;
        let mut a = Active {
            next: 0,
            logprobs: Vec::new(),
            prompt_ms,
            decode_start: Instant::now(),
            job,
            cache,
            sequence,
        };
        if a.sequence.done() {
            self.finish(&mut a);
            return None;
        }
        let logits = logits?;
        self.metrics.generated(1);
        if self.advance(&mut a, &logits) {
            None
        } else {
            Some(a)
        }
    }

    /// Take one step of `a` from its last position's `logits`; true when it has ended.
    fn advance(&self, a: &mut Active, logits: &[f32]) -> bool {
        let tokenizer = &self.served.model.tokenizer;
        let step = match a.sequence.step(logits, tokenizer) {
            Ok(step) => step,
            Err(e) => {
                let _ = a.job.events.send(Event::Failed(ApiError::server(format!(
                    "decoding a token failed: {e}"
                ))));
                return true;
            }
        };
        if let (Some(top), Some(token)) = (a.job.logprobs, step.token) {
            a.logprobs
                .push(token_logprob(logits, token, top, tokenizer));
        }
        if !step.text.is_empty() {
            let event = Event::Text {
                text: step.text,
                logprobs: std::mem::take(&mut a.logprobs),
            };
            if a.job.events.send(event).is_err() {
                self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        match step.next {
            Some(next) => {
                a.next = next;
                false
            }
            None => {
                self.finish(a);
                true
            }
        }
    }

    /// Send the held-back text and the summary of a finished sequence.
    fn finish(&self, a: &mut Active) {
        let rest = a.sequence.finish();
        if !rest.is_empty() || !a.logprobs.is_empty() {
            let _ = a.job.events.send(Event::Text {
                text: rest,
                logprobs: std::mem::take(&mut a.logprobs),
            });
        }
        // Uncounted before the answer is complete, so a client that has it never sees its own
        // sequence still in the gauge (the loop sets the exact count after each step).
        self.metrics.active.fetch_sub(1, Ordering::Relaxed);
        let _ = a.job.events.send(Event::Done(Finish {
            reason: a.sequence.finish_reason.unwrap_or("length"),
            prompt_tokens: a.sequence.prompt_tokens,
            completion_tokens: a.sequence.new_tokens,
            prompt_ms: a.prompt_ms,
            predicted_ms: a.decode_start.elapsed().as_secs_f64() * 1e3,
        }));
    }
}

/// The error of a request past its deadline.
fn timed_out() -> ApiError {
    ApiError::server(
        "the request ran past the server's deadline (--timeout); ask for fewer tokens or raise it",
    )
    .with_status(axum::http::StatusCode::GATEWAY_TIMEOUT)
    .with_code("timeout")
}

/// The log-probability of `token` under `logits` and the `top` most likely tokens.
fn token_logprob(
    logits: &[f32],
    token: u32,
    top: usize,
    tokenizer: &crate::model::tokenizer::Tokenizer,
) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_total = logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    let logprob = |id: usize| (logits[id] as f64 - log_total) as f32;
    let text = |id: u32| tokenizer.decode(&[id], false).unwrap_or_default();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    if top > 0 {
        let nth = top.min(order.len()) - 1;
        order.select_nth_unstable_by(nth, |&a, &b| logits[b].total_cmp(&logits[a]));
        order.truncate(top);
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    } else {
        order.clear();
    }
    TokenLogprob {
        token: text(token),
        logprob: logprob(token as usize),
        top: order
            .into_iter()
            .map(|id| (text(id as u32), logprob(id)))
            .collect(),
    }
}
