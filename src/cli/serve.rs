//! `tunelab serve MODEL [--lora NAME=PATH]…`: load a model and its adapters and serve them over
//! an OpenAI-compatible HTTP API until Ctrl-C ([`tunelab::serve`]).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use tunelab::script::HostContext;
use tunelab::serve::{self, AdapterSource, ServeOptions, Served};
use tunelab::Error;

/// The `serve` command's arguments.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// A GGUF file, a Hugging Face folder, or `tiny`.
    model: String,
    /// An adapter to serve as NAME (a PEFT folder or a tunelab run); repeatable.
    #[arg(long = "lora", value_name = "NAME=PATH")]
    lora: Vec<String>,
    /// The id of the base model in `/v1/models` and requests (default: the file name).
    #[arg(long)]
    alias: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` (or set TUNELAB_API_KEY).
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// Sequences decoded together in one batch.
    #[arg(long, default_value_t = 4, value_name = "N")]
    parallel: usize,
    /// Context length per sequence (default: the model's).
    #[arg(long, value_name = "N")]
    ctx: Option<usize>,
    /// Requests that may wait for a slot; more get 503 at once.
    #[arg(long, default_value_t = 64, value_name = "N")]
    queue: usize,
    /// Chat template for every target (default: each adapter's training template, else the
    /// model's own).
    #[arg(long, value_name = "T")]
    template: Option<String>,
    /// GGUF: keep weights in their quantized blocks (less memory, llama.cpp-style kernels).
    #[arg(long)]
    quantized: bool,
    /// An origin browsers may call from (CORS); repeatable.
    #[arg(long, value_name = "ORIGIN")]
    cors: Vec<String>,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 10 * 1024 * 1024, value_name = "BYTES")]
    max_body: usize,
    /// Seconds a request may take, waiting included.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    timeout: u64,
    /// Seconds between `: ping` comments on a quiet stream.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    keep_alive: f64,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Run the server until Ctrl-C.
pub fn serve(ctx: &HostContext, args: &ServeArgs) -> Result<ExitCode, Error> {
    let adapters = args
        .lora
        .iter()
        .map(|spec| AdapterSource::parse(spec))
        .collect::<Result<Vec<_>, _>>()?;
    if !(args.keep_alive > 0.0 && args.keep_alive.is_finite()) {
        return Err(Error::msg(
            "serve: --keep-alive must be a positive number of seconds",
        ));
    }
    let options = ServeOptions {
        host: args.host.clone(),
        port: args.port,
        api_key: args
            .api_key
            .clone()
            .or_else(|| std::env::var("TUNELAB_API_KEY").ok())
            .filter(|k| !k.is_empty()),
        parallel: args.parallel,
        context: args.ctx,
        queue: args.queue,
        cors: args.cors.clone(),
        body_limit: args.max_body,
        timeout: Duration::from_secs(args.timeout),
        keep_alive: Duration::from_secs_f64(args.keep_alive),
    };
    let load_options = tunelab::model::LoadOptions {
        device: args.device.clone(),
        quantized: args.quantized,
        ..Default::default()
    };
    let (source, alias, template) = (
        args.model.clone(),
        args.alias.clone(),
        args.template.clone(),
    );
    let names: Vec<String> = adapters.iter().map(|a| a.name.clone()).collect();
    let running = serve::start(
        options.clone(),
        Box::new(move || {
            let model = tunelab::model::load(&source, &load_options)?;
            let name = alias.unwrap_or_else(|| Served::default_name(&source));
            Served::new(model, &name, &adapters, template.as_deref())
        }),
    )?;
    let say = |line: String| {
        ctx.output.line(&line);
        let _ = std::io::stdout().flush();
    };
    say(format!(
        "tunelab serve: listening on {} (loading {}…; GET /health answers 200 when ready)",
        running.url(),
        args.model
    ));
    running.wait_ready(&ctx.cancel)?;
    let key = if options.api_key.is_some() {
        ", API key required"
    } else {
        ""
    };
    let adapters = if names.is_empty() {
        String::new()
    } else {
        format!(", adapters {}", names.join(", "))
    };
    say(format!(
        "tunelab serve: ready: {} slots{adapters}{key}; Ctrl-C stops",
        options.parallel
    ));
    running.run_until(&ctx.cancel)?;
    say("tunelab serve: stopped".to_string());
    Ok(ExitCode::SUCCESS)
}
