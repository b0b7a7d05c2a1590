//! Script API, area "serve": `serve` (blocks until Ctrl-C), `serve_in_background` (a Server
//! with `url` and `stop()`), and `http_get` / `http_post` to query a server from a script.
//! Thin bindings over [`crate::serve`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rhai::plugin::*;
use rhai::{Map, INT};

use crate::model::Model;
use crate::script::engine::host;
use crate::script::errors::{runtime, IntoScript, ScriptResult};
use crate::script::options::Options;
use crate::serve::{Running, ServeOptions, Served};

/// The area name `:help` groups these functions under.
pub const AREA: &str = "serve";

/// The compiled module of this area.
pub fn module() -> rhai::Module {
    exported_module!(serve_api)
}

/// Option keys of `serve` and `serve_in_background`.
const SERVE_KEYS: [&str; 13] = [
    "host",
    "port",
    "api_key",
    "parallel",
    "ctx",
    "queue",
    "template",
    "cors",
    "adapters",
    "alias",
    "timeout",
    "keep_alive",
    "max_body",
];

/// A server started by `serve_in_background`; stopped by `stop()` or when the last copy is
/// dropped.
#[derive(Clone)]
pub struct Server {
    url: String,
    running: Arc<Mutex<Option<Running>>>,
}

/// The server options and what to serve, from a script's option map.
fn serve_setup(model: Model, opts: Map) -> ScriptResult<(ServeOptions, crate::serve::Loader)> {
    let o = Options::new("serve options", opts, &SERVE_KEYS)?;
    let d = ServeOptions::default();
    let positive = |key: &str, v: Option<INT>, default: usize| -> ScriptResult<usize> {
        match v {
            None => Ok(default),
            Some(n) if n >= 1 => Ok(n as usize),
            Some(n) => Err(runtime(format!(
                "serve options: key \"{key}\": expected a number ≥ 1, got {n}"
            ))),
        }
    };
    let port = match o.int("port")? {
        None => d.port,
        Some(p) if (0..=65535).contains(&p) => p as u16,
        Some(p) => {
            return Err(runtime(format!(
                "serve options: key \"port\": expected 0 to 65535, got {p}"
            )))
        }
    };
    let seconds = |key: &str, default: Duration| -> ScriptResult<Duration> {
        match o.float(key)? {
            None => Ok(default),
            Some(s) if s > 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s)),
            Some(s) => Err(runtime(format!(
                "serve options: key \"{key}\": expected seconds > 0, got {s}"
            ))),
        }
    };
    let options = ServeOptions {
        host: o.string("host")?.unwrap_or(d.host),
        port,
        api_key: o.string("api_key")?.filter(|k| !k.is_empty()),
        parallel: positive("parallel", o.int("parallel")?, d.parallel)?,
        context: o
            .int("ctx")?
            .map(|c| positive("ctx", Some(c), 1))
            .transpose()?,
        queue: positive("queue", o.int("queue")?, d.queue)?,
        cors: o
            .array("cors")?
            .unwrap_or_default()
            .iter()
            .map(|v| v.to_string())
            .collect(),
        body_limit: positive("max_body", o.int("max_body")?, d.body_limit)?,
        timeout: seconds("timeout", d.timeout)?,
        keep_alive: seconds("keep_alive", d.keep_alive)?,
    };
    let mut adapters = Vec::new();
    for (name, value) in o.map("adapters")?.unwrap_or_default() {
        let root = if value.is_string() {
            value.to_string()
        } else {
            format!("(adapter {name})")
        };
        let what = format!("serve options: adapters.{name}");
        let adapter = crate::script::api_export::adapter_option(value, &model, &what)?;
        adapters.push((name.to_string(), root, adapter));
    }
    let name = o
        .string("alias")?
        .unwrap_or_else(|| Served::default_name(&model.source));
    let template = o.string("template")?;
    let load: crate::serve::Loader =
        Box::new(move || Served::with_adapters(model, &name, adapters, template.as_deref()));
    Ok((options, load))
}

/// A JSON response as `#{ status, body }`: the body parsed when it is JSON, else its text.
fn response_map(r: crate::serve::client::HttpResponse) -> ScriptResult<Map> {
    let mut m = Map::new();
    m.insert("status".into(), (r.status as INT).into());
    let body = match r.json() {
        Ok(v) => rhai::serde::to_dynamic(v)?,
        Err(_) => r.text().into(),
    };
    m.insert("body".into(), body);
    Ok(m)
}

/// Headers and timeout from `http_get`/`http_post` options.
fn http_options(opts: Map) -> ScriptResult<(Option<String>, Duration)> {
    let o = Options::new("http options", opts, &["api_key", "timeout"])?;
    let timeout = o.float("timeout")?.unwrap_or(600.0);
    if !(timeout > 0.0 && timeout.is_finite()) {
        return Err(runtime(
            "http options: key \"timeout\": expected seconds > 0",
        ));
    }
    Ok((o.string("api_key")?, Duration::from_secs_f64(timeout)))
}

fn http(method: &str, url: &str, body: Option<Vec<u8>>, opts: Map) -> ScriptResult<Map> {
    let (key, timeout) = http_options(opts)?;
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let r =
        crate::serve::client::request(method, url, &headers, body.as_deref(), timeout).script()?;
    response_map(r)
}

#[export_module]
pub mod serve_api {
    use super::*;

    /// A server started in the background.
    pub type Server = super::Server;

    /// Serve `model` over an OpenAI-compatible HTTP API until Ctrl-C (then return). Options:
    /// `host` ("127.0.0.1"), `port` (8080; 0 = any free port), `api_key`, `parallel` (4
    /// sequences per batch), `ctx`, `queue` (64), `template`, `cors` (origins), `adapters`
    /// (`#{ name: adapter or folder }`, chosen per request by `model`), `alias` (the base
    /// model's id), `timeout` and `keep_alive` (seconds), `max_body` (bytes).
    #[rhai_fn(return_raw)]
    pub fn serve(ctx: NativeCallContext, model: Model, opts: Map) -> ScriptResult<()> {
        let h = host(&ctx);
        let (options, load) = serve_setup(model, opts)?;
        let running = crate::serve::start(options, load).script()?;
        running.wait_ready(&h.cancel).script()?;
        h.output
            .line(&format!("serving on {} (Ctrl-C stops)", running.url()));
        running.run_until(&h.cancel).script()?;
        // Ctrl-C ended the server, not the script.
        h.cancel.reset();
        h.output.line("server stopped");
        Ok(())
    }

    /// `serve` without blocking: returns once the model is ready; `server.url` is its address
    /// and `server.stop()` ends it. Same options as `serve`.
    #[rhai_fn(return_raw)]
    pub fn serve_in_background(
        ctx: NativeCallContext,
        model: Model,
        opts: Map,
    ) -> ScriptResult<Server> {
        let (options, load) = serve_setup(model, opts)?;
        let running = crate::serve::start(options, load).script()?;
        running.wait_ready(&host(&ctx).cancel).script()?;
        Ok(Server {
            url: running.url(),
            running: Arc::new(Mutex::new(Some(running))),
        })
    }

    /// The server's address, `http://HOST:PORT`.
    #[rhai_fn(get = "url", pure)]
    pub fn url(server: &mut Server) -> String {
        server.url.clone()
    }

    /// Stop the server (open requests end).
    #[rhai_fn(global)]
    pub fn stop(server: &mut Server) {
        if let Some(r) = server.running.lock().ok().and_then(|mut r| r.take()) {
            r.stop();
        }
    }

    /// `Server(http://…)`.
    #[rhai_fn(global, name = "to_string", pure)]
    pub fn server_to_string(server: &mut Server) -> String {
        format!("Server({})", server.url)
    }

    /// GET `url`; returns `#{ status, body }` (body parsed when it is JSON).
    #[rhai_fn(return_raw)]
    pub fn http_get(url: &str) -> ScriptResult<Map> {
        http("GET", url, None, Map::new())
    }

    /// GET with options `api_key` and `timeout` (seconds).
    #[rhai_fn(name = "http_get", return_raw)]
    pub fn http_get_with(url: &str, opts: Map) -> ScriptResult<Map> {
        http("GET", url, None, opts)
    }

    /// POST `body` (a map, sent as JSON) to `url`; returns `#{ status, body }`.
    #[rhai_fn(return_raw)]
    pub fn http_post(url: &str, body: Map) -> ScriptResult<Map> {
        http_post_with(url, body, Map::new())
    }

    /// POST with options `api_key` and `timeout` (seconds).
    #[rhai_fn(name = "http_post", return_raw)]
    pub fn http_post_with(url: &str, body: Map, opts: Map) -> ScriptResult<Map> {
        let json: serde_json::Value = rhai::serde::from_dynamic(&Dynamic::from_map(body))?;
        http("POST", url, Some(json.to_string().into_bytes()), opts)
    }
}
