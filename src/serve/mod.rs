//! `tunelab serve`: an OpenAI-compatible HTTP server for a base model and its LoRA adapters.
//!
//! [`start`] binds the address at once (so `/health` answers 503 while the model loads), then
//! an engine thread loads the model and adapters ([`registry`]) and runs every request
//! ([`engine`]: a bounded queue, continuous batching, one decoding batch per step), while a small
//! tokio runtime serves HTTP ([`routes`]: requests checked by [`protocol`], answers shaped by
//! [`responses`], errors by [`error`], counters in [`metrics`]). [`client`] is a minimal blocking
//! HTTP client for scripts and tests that query a server.

pub mod client;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod protocol;
pub mod registry;
pub mod responses;
pub mod routes;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use engine::{Engine, Job};
use error::{ApiError, ApiResult};
use metrics::Metrics;
pub use registry::{AdapterSource, Served};

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    /// 0: any free port (the chosen one is in [`Running::addr`]).
    pub port: u16,
    /// Requests must send `Authorization: Bearer KEY` (None: no key needed).
    pub api_key: Option<String>,
    /// Sequences decoded together.
    pub parallel: usize,
    /// Context length (prompt + completion) per sequence; None: the model's.
    pub context: Option<usize>,
    /// Requests that may wait for a slot; more are answered 503 at once.
    pub queue: usize,
    /// Origins allowed to call from a browser (CORS).
    pub cors: Vec<String>,
    /// Largest request body, in bytes (413 beyond).
    pub body_limit: usize,
    /// A request's deadline, waiting in the queue included.
    pub timeout: Duration,
    /// How often a stream with nothing to say sends a `: ping` comment.
    pub keep_alive: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: None,
            parallel: 4,
            context: None,
            queue: 64,
            cors: Vec::new(),
            body_limit: 10 * 1024 * 1024,
            timeout: Duration::from_secs(600),
            keep_alive: Duration::from_secs(10),
        }
    }
}

/// What the handlers need once the model is loaded.
pub struct Ready {
    pub served: Arc<Served>,
    pub jobs: SyncSender<Job>,
    /// The context length sequences may fill.
    pub context: usize,
}

/// State shared by the handlers, the engine and [`Running`].
pub struct Shared {
    pub options: ServeOptions,
    pub metrics: Arc<Metrics>,
    ready: OnceLock<Ready>,
    /// Why loading failed, if it did.
    failed: Mutex<Option<String>>,
    stopping: Arc<AtomicBool>,
}

impl Shared {
    /// The loaded server, or 503 while loading.
    pub fn ready(&self) -> ApiResult<&Ready> {
        self.ready.get().ok_or_else(|| {
            ApiError::unavailable("Loading model: retry when GET /health answers 200")
        })
    }
}

/// A server running in the background.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    http: Option<JoinHandle<()>>,
    engine: Option<JoinHandle<()>>,
}

/// Loads what to serve (on the engine thread).
pub type Loader = Box<dyn FnOnce() -> Result<Served> + Send>;

/// Bind `opts.host:opts.port`, then load with `load` and serve until [`Running::stop`].
pub fn start(opts: ServeOptions, load: Loader) -> Result<Running> {
    if opts.parallel == 0 || opts.queue == 0 {
        return Err(Error::msg(
            "serve: --parallel and --queue must be at least 1",
        ));
    }
    let listener = std::net::TcpListener::bind((opts.host.as_str(), opts.port)).map_err(|e| {
        Error::msg(format!(
            "serve: cannot listen on {}:{}: {e} (is another server using the port? pick another with --port)",
            opts.host, opts.port
        ))
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::msg(format!("serve: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::msg(format!("serve: {e}")))?;
    let shared = Arc::new(Shared {
        options: opts.clone(),
        metrics: Arc::new(Metrics::default()),
        ready: OnceLock::new(),
        failed: Mutex::new(None),
        stopping: Arc::new(AtomicBool::new(false)),
    });
    let (shutdown, on_shutdown) = tokio::sync::oneshot::channel::<()>();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tunelab-http")
        .enable_all()
        .build()
        .map_err(|e| Error::msg(format!("serve: cannot start the HTTP runtime: {e}")))?;
    let app = routes::router(shared.clone());
    let http = std::thread::Builder::new()
        .name("tunelab-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                // Not a graceful shutdown: that would wait for every keep-alive connection.
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    _ = on_shutdown => {}
                }
            });
            // Streams still open are cut rather than waited for.
            runtime.shutdown_timeout(Duration::from_millis(200));
        })
        .map_err(|e| Error::msg(format!("serve: {e}")))?;
    let engine_shared = shared.clone();
    let engine = std::thread::Builder::new()
        .name("tunelab-engine".into())
        .spawn(move || {
            let s = engine_shared;
            let served = match load() {
                Ok(served) => Arc::new(served),
                Err(e) => {
                    *s.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                    return;
                }
            };
            let max = served.model.config().max_position_embeddings;
            let context = s.options.context.unwrap_or(max).min(max);
            let (jobs, queue) = std::sync::mpsc::sync_channel(s.options.queue);
            let _ = s.ready.set(Ready {
                served: served.clone(),
                jobs,
                context,
            });
            Engine {
                served,
                parallel: s.options.parallel,
                context,
                metrics: s.metrics.clone(),
                stopping: s.stopping.clone(),
            }
            .run(queue);
        })
        .map_err(|e| Error::msg(format!("serve: {e}")))?;
    Ok(Running {
        addr,
        shared,
        shutdown: Some(shutdown),
        http: Some(http),
        engine: Some(engine),
    })
}

impl Running {
    /// `http://HOST:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Wait until the model is loaded (Ok) or loading failed (its error).
    pub fn wait_ready(&self, cancel: &CancelToken) -> Result<()> {
        loop {
            if self.shared.ready.get().is_some() {
                return Ok(());
            }
            if let Some(e) = self.load_error() {
                return Err(Error::msg(e));
            }
            cancel.sleep(Duration::from_millis(20))?;
        }
    }

    fn load_error(&self) -> Option<String> {
        self.shared
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Serve until `cancel` is set (Ctrl-C), then stop. Fails if loading failed.
    pub fn run_until(self, cancel: &CancelToken) -> Result<()> {
        while !cancel.is_cancelled() {
            if let Some(e) = self.load_error() {
                self.stop();
                return Err(Error::msg(e));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop();
        Ok(())
    }

    /// Stop serving: open streams end, the engine finishes its step and exits.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.http.take() {
            let _ = h.join();
        }
        if let Some(h) = self.engine.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}
