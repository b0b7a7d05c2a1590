//! Script API, area "model": `load_model`, tokenizers, chat templates, `generate`, `chat`,
//! `perplexity`, `parity`. Thin bindings over [`crate::model`], [`crate::generate`] and
//! [`crate::data::template`].

use std::sync::{Arc, Mutex};

use rhai::plugin::*;
use rhai::{Array, Map};

use crate::data::{Message, Role};
use crate::generate::chat::{ChatSession, TemplateChoice};
use crate::generate::sampling::SamplingOptions;
use crate::generate::GenerateOptions;

use super::errors::{runtime, IntoScript, ScriptResult};
use super::options::Options;

/// The area name `:help` groups these functions under.
pub const AREA: &str = "model";

/// The compiled module of this area.
pub fn module() -> rhai::Module {
    exported_module!(model_api)
}

/// A chat session shared between script variables (asking through any copy continues it).
#[derive(Clone)]
pub struct Chat(pub Arc<Mutex<ChatSession>>);

/// Keys of the sampling options shared by `generate` and `chat`.
const SAMPLING_KEYS: &[&str] = &[
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "seed",
    "stop",
    "stream",
];

/// Generation options from a checked option map; returns them and whether to stream.
fn generate_options(o: &Options) -> ScriptResult<(GenerateOptions, bool)> {
    let mut g = GenerateOptions::default();
    let d = SamplingOptions::default();
    g.max_new_tokens = o
        .int("max_new_tokens")?
        .map_or(g.max_new_tokens, |n| n.max(0) as usize);
    g.sampling = SamplingOptions {
        temperature: o.float("temperature")?.unwrap_or(d.temperature),
        top_p: o.float("top_p")?.unwrap_or(d.top_p),
        top_k: o.int("top_k")?.map_or(d.top_k, |k| k.max(0) as usize),
        min_p: o.float("min_p")?.unwrap_or(d.min_p),
        repetition_penalty: o
            .float("repetition_penalty")?
            .unwrap_or(d.repetition_penalty),
        seed: o.int("seed")?.map_or(d.seed, |s| s as u64),
        ..d
    };
    if let Some(stops) = o.array("stop")? {
        // An empty stop string would match at once and end every reply.
        g.stop_strings = stops
            .iter()
            .map(|s| s.to_string())
            .filter(|s| !s.is_empty())
            .collect();
    }
    Ok((g, o.bool("stream")?.unwrap_or(false)))
}

/// Keys that choose how a prompt is presented, shared by `generate` and `chat`.
const PROMPT_KEYS: [&str; 3] = ["template", "system", "adapter"];

/// What the prompt keys chose: the adapter (checked against the model), the template (the
/// `template` option, else the adapter's training template; `None` when neither says) and the
/// system prompt.
struct PromptOptions {
    adapter: Option<crate::lora::Adapter>,
    template: Option<TemplateChoice>,
    system: String,
}

/// An `adapter` option value (an adapter or its folder) that fits `model`.
fn fitting_adapter(
    value: rhai::Dynamic,
    model: &crate::model::Model,
    what: &str,
) -> ScriptResult<crate::lora::Adapter> {
    let adapter = crate::script::api_export::adapter_option(value, model, what)?;
    adapter
        .check_fits(&model.llama, std::path::Path::new(&adapter.base_model))
        .script()?;
    Ok(adapter)
}

/// Reads `template`, `system` and `adapter` from checked options.
fn prompt_options(
    o: &Options,
    model: &crate::model::Model,
    what: &str,
) -> ScriptResult<PromptOptions> {
    let adapter = match o.value("adapter") {
        Some(v) => Some(fitting_adapter(v, model, what)?),
        None => None,
    };
    // Without a template option, an adapter talks in the template it was trained with.
    let trained_with = adapter.as_ref().and_then(|a| a.template.clone());
    let template = match o.string("template")?.or(trained_with) {
        Some(name) => Some(TemplateChoice::resolve(&name, model).script()?),
        None => None,
    };
    Ok(PromptOptions {
        adapter,
        template,
        system: o.string("system")?.unwrap_or_default(),
    })
}

/// The checked options of `generate` and `chat` (`what` names them in errors): the map itself,
/// the generation settings with the adapter in place, whether to stream, and the prompt choices.
fn generation_and_prompt(
    what: &str,
    opts: Map,
    model: &crate::model::Model,
) -> ScriptResult<(Options, GenerateOptions, bool, PromptOptions)> {
    let mut keys: Vec<&str> = SAMPLING_KEYS.to_vec();
    keys.extend(PROMPT_KEYS);
    let o = Options::new(what, opts, &keys)?;
    let (mut g, stream) = generate_options(&o)?;
    let mut prompt = prompt_options(&o, model, what)?;
    g.adapter = prompt.adapter.take();
    Ok((o, g, stream, prompt))
}

/// `[#{ role, content }]` → (system, messages).
fn messages_from(list: Array) -> ScriptResult<(String, Vec<Message>)> {
    let mut system = String::new();
    let mut out = Vec::new();
    for (i, m) in list.into_iter().enumerate() {
        let m = m
            .try_cast::<Map>()
            .ok_or_else(|| runtime(format!("messages[{i}]: expected #{{ role, content }}")))?;
        let role_name = m.get("role").map(|r| r.to_string()).unwrap_or_default();
        let role = Role::parse(&role_name).ok_or_else(|| runtime(format!("messages[{i}]: role \"{role_name}\" is not one of user, assistant, system, function, observation")))?;
        let content = m.get("content").map(|c| c.to_string()).unwrap_or_default();
        if role == Role::System && out.is_empty() {
            system = content;
        } else {
            out.push(Message::new(role, content));
        }
    }
    Ok((system, out))
}

#[export_module]
mod model_api {
    use std::path::Path;

    use rhai::{Array, Dynamic, Map, NativeCallContext, INT};

    use super::{fitting_adapter, generation_and_prompt, messages_from};
    use crate::data::template;
    use crate::data::{Message, Role};
    use crate::generate::chat::{ChatSession, TemplateChoice};
    use crate::model::perplexity;
    use crate::script::engine::host;
    use crate::script::errors::{runtime, IntoScript, ScriptResult};
    use crate::script::options::Options;

    /// A loaded model: `config`, `tokenizer`, `num_params()`.
    pub type Model = crate::model::Model;
    /// A tokenizer: `encode(text)`, `decode(ids)`.
    pub type Tokenizer = crate::model::Tokenizer;
    /// A chat session: `ask(text)`, `history()`, `reset()`.
    pub type Chat = super::Chat;

    /// Load a model: a Hugging Face folder, a `.gguf` file, or `"tiny"` (a small random Llama).
    #[rhai_fn(return_raw)]
    pub fn load_model(path_or_preset: &str) -> ScriptResult<Model> {
        crate::model::load(path_or_preset, &Default::default()).script()
    }

    /// Load a model with options: `device` ("cpu" | "cuda" | "cuda:N" | "auto"), `dtype` ("auto":
    /// f32 on the CPU, bf16 on a GPU | "f32" | "bf16" | "f16"), `quantized` (GGUF: keep the quantized blocks), `seed` (the random weights of tiny and `shape:` models), `autocast` (bf16 on a
    /// CPU with AVX512-BF16: true computes as PyTorch's bf16 autocast, false in bf16 throughout),
    /// `layers` and `vocab_size` (a slice of a `shape:` model, e.g. `load_model("shape:llama-3-8b",
    /// #{ layers: 1, vocab_size: 4096 })`).
    #[rhai_fn(name = "load_model", return_raw)]
    pub fn load_model_with(path_or_preset: &str, opts: Map) -> ScriptResult<Model> {
        let o = Options::new(
            "load_model options",
            opts,
            &[
                "device",
                "dtype",
                "quantized",
                "seed",
                "autocast",
                "layers",
                "vocab_size",
            ],
        )?;
        let mut lo = crate::model::LoadOptions::default();
        if let Some(d) = o.string("device")? {
            lo.device = d;
        }
        if let Some(d) = o.string("dtype")? {
            lo.dtype = match d.as_str() {
                "auto" => None,
                "f32" => Some(candle_core::DType::F32),
                "bf16" => Some(candle_core::DType::BF16),
                "f16" => Some(candle_core::DType::F16),
                other => return Err(runtime(format!("load_model options: key \"dtype\": expected \"auto\", \"f32\", \"bf16\" or \"f16\", got \"{other}\""))),
            };
        }
        lo.quantized = o.bool("quantized")?.unwrap_or(false);
        lo.seed = o.int("seed")?.unwrap_or(0) as u64;
        lo.autocast = o.bool("autocast")?.unwrap_or(true);
        lo.shape.layers = o.int("layers")?.map(|n| n.max(1) as usize);
        lo.shape.vocab_size = o.int("vocab_size")?.map(|n| n.max(1) as usize);
        crate::model::load(path_or_preset, &lo).script()
    }

    /// The model's shape and form: `#{ architecture, vocab_size, hidden_size, ..., quantized,
    /// format, dtype, device }`.
    #[rhai_fn(get = "config", pure)]
    pub fn config(model: &mut Model) -> Map {
        let c = model.config();
        let mut m = Map::new();
        let int = |n: usize| Dynamic::from(n as INT);
        m.insert("architecture".into(), c.architecture.clone().into());
        m.insert("vocab_size".into(), int(c.vocab_size));
        m.insert("hidden_size".into(), int(c.hidden_size));
        m.insert("intermediate_size".into(), int(c.intermediate_size));
        m.insert("num_hidden_layers".into(), int(c.num_hidden_layers));
        m.insert("num_attention_heads".into(), int(c.num_attention_heads));
        m.insert("num_key_value_heads".into(), int(c.num_key_value_heads));
        m.insert("head_dim".into(), int(c.head_dim));
        m.insert("rms_norm_eps".into(), Dynamic::from(c.rms_norm_eps));
        m.insert("rope_theta".into(), Dynamic::from(c.rope_theta));
        m.insert(
            "max_position_embeddings".into(),
            int(c.max_position_embeddings),
        );
        m.insert(
            "tie_word_embeddings".into(),
            Dynamic::from(c.tie_word_embeddings),
        );
        m.insert("quantized".into(), Dynamic::from(model.quantized));
        m.insert("format".into(), model.format.into());
        m.insert(
            "dtype".into(),
            crate::model::parity::dtype_name(model.llama.weights_dtype()).into(),
        );
        m.insert(
            "device".into(),
            crate::model::device_name(&model.llama.device).into(),
        );
        m.insert(
            "has_chat_template".into(),
            Dynamic::from(model.chat_template.is_some()),
        );
        m
    }

    /// The model's tokenizer.
    #[rhai_fn(get = "tokenizer", pure)]
    pub fn tokenizer(model: &mut Model) -> Tokenizer {
        model.tokenizer.clone()
    }

    /// Parameters of the network.
    #[rhai_fn(global, pure)]
    pub fn num_params(model: &mut Model) -> INT {
        model.num_params() as INT
    }

    /// Architecture, size, dtype, device and source.
    #[rhai_fn(global, name = "to_string", pure)]
    pub fn model_to_string(model: &mut Model) -> String {
        model.to_string()
    }

    /// Same as `to_string`.
    #[rhai_fn(global, name = "to_debug", pure)]
    pub fn model_to_debug(model: &mut Model) -> String {
        model.to_string()
    }

    /// Token ids of `text` (special tokens such as `<|im_start|>` become their ids).
    #[rhai_fn(global, return_raw, pure)]
    pub fn encode(tok: &mut Tokenizer, text: &str) -> ScriptResult<Array> {
        Ok(tok
            .encode(text)
            .script()?
            .into_iter()
            .map(|id| Dynamic::from(id as INT))
            .collect())
    }

    /// The text of token `ids` (special tokens kept).
    #[rhai_fn(global, return_raw, pure)]
    pub fn decode(tok: &mut Tokenizer, ids: Array) -> ScriptResult<String> {
        let ids: Vec<u32> = ids
            .iter()
            .map(|d| {
                d.as_int()
                    .map(|i| i as u32)
                    .map_err(|t| runtime(format!("decode: expected token ids (integers), got {t}")))
            })
            .collect::<ScriptResult<_>>()?;
        tok.decode(&ids, false).script()
    }

    /// Vocabulary size, added tokens included.
    #[rhai_fn(get = "vocab_size", pure)]
    pub fn vocab_size(tok: &mut Tokenizer) -> INT {
        tok.vocab_size() as INT
    }

    /// The tokenizer's size and origin.
    #[rhai_fn(global, name = "to_string", pure)]
    pub fn tokenizer_to_string(tok: &mut Tokenizer) -> String {
        format!("{tok:?}")
    }

    /// Names of the built-in chat templates (LLaMA-Factory's strings).
    pub fn template_names() -> Array {
        template::names().into_iter().map(Dynamic::from).collect()
    }

    /// Render `messages` (`[#{ role, content }]`, a leading system message allowed) with the
    /// built-in template `name`, ending where the assistant's reply starts.
    #[rhai_fn(return_raw)]
    pub fn apply_template(name: &str, messages: Array) -> ScriptResult<String> {
        let t = template::get(name).script()?;
        let (system, messages) = messages_from(messages)?;
        t.render(&system, "", &messages, &template::default_tokens(name))
            .script()
    }

    /// Render a dataset example `#{ system, tools, messages }` (e.g. `ds[0]`) with the built-in
    /// template `name`, tools included as LLaMA-Factory writes them.
    #[rhai_fn(name = "apply_template", return_raw)]
    pub fn apply_template_example(name: &str, example: Map) -> ScriptResult<String> {
        let t = template::get(name).script()?;
        let e = crate::script::api_data::map_to_example(
            Dynamic::from_map(example),
            "apply_template example",
        )?;
        t.render(
            &e.system,
            &e.tools,
            &e.messages,
            &template::default_tokens(name),
        )
        .script()
    }

    /// Render `messages` for `model`: `name` is a built-in template or "auto" (the model's own).
    #[rhai_fn(name = "apply_template", return_raw)]
    pub fn apply_template_for(model: Model, name: &str, messages: Array) -> ScriptResult<String> {
        let choice = TemplateChoice::resolve(name, &model).script()?;
        let (system, messages) = messages_from(messages)?;
        choice.prompt(&system, &messages, &model).script()
    }

    /// Continue `prompt`; options: `max_new_tokens` (256), `temperature` (0 = greedy), `top_p`,
    /// `top_k`, `min_p`, `repetition_penalty`, `seed`, `stop` (strings), `stream` (print tokens as
    /// they come), and as for `chat`: `adapter` (a LoRA adapter or its folder), `template`,
    /// `system`. Without these the prompt is raw text, continued as it is. With any of them it is
    /// sent as one user message in a chat template, as `chat` does, and the reply returned: the
    /// `template` option, else the adapter's training template, else the model's own.
    /// `template: "empty"` keeps the prompt raw.
    #[rhai_fn(return_raw)]
    pub fn generate(
        ctx: NativeCallContext,
        model: Model,
        prompt: &str,
        opts: Map,
    ) -> ScriptResult<String> {
        let (_, mut g, stream, p) = generation_and_prompt("generate options", opts, &model)?;
        // As in chat: with an adapter or a system prompt and no known template, the model's own.
        let template = match p.template {
            Some(t) => Some(t),
            None if !p.system.is_empty() || g.adapter.is_some() => {
                Some(TemplateChoice::resolve("auto", &model).script()?)
            }
            None => None,
        };
        let text = match &template {
            Some(t) => {
                g.stop_ids.extend(t.stop_ids(&model));
                let user = [Message::new(Role::User, prompt)];
                t.prompt(&p.system, &user, &model).script()?
            }
            None => prompt.to_string(),
        };
        let h = host(&ctx);
        let ids = model.tokenizer.encode(&text).script()?;
        let out = crate::generate::generate(&model, &ids, &g, &h.cancel, &mut |t| {
            if stream {
                h.output.write(t)
            }
        })
        .script()?;
        if stream {
            h.output.write("\n");
        }
        Ok(out.text)
    }

    /// A chat session with the model's own template (or the default).
    #[rhai_fn(return_raw)]
    pub fn chat(model: Model) -> ScriptResult<Chat> {
        chat_with(model, Map::new())
    }

    /// A chat session; options: `template` ("auto" or a built-in name), `system`, `adapter`
    /// (a LoRA adapter or its folder; its training template is the default), `stream` (default
    /// true), and the sampling options of
    /// `generate` (greedy by default).
    #[rhai_fn(name = "chat", return_raw)]
    pub fn chat_with(model: Model, opts: Map) -> ScriptResult<Chat> {
        let (o, mut g, _, prompt) = generation_and_prompt("chat options", opts, &model)?;
        if o.int("max_new_tokens")?.is_none() {
            g.max_new_tokens = 512;
        }
        let stream = o.bool("stream")?.unwrap_or(true);
        let choice = match prompt.template {
            Some(choice) => choice,
            None => TemplateChoice::resolve("auto", &model).script()?,
        };
        let mut session = ChatSession::new(model, choice, prompt.system, g);
        session.stream = stream;
        Ok(Chat(std::sync::Arc::new(std::sync::Mutex::new(session))))
    }

    /// Send `text`; the reply streams to the output as it is generated and is returned.
    #[rhai_fn(global, return_raw, pure)]
    pub fn ask(ctx: NativeCallContext, chat: &mut Chat, text: &str) -> ScriptResult<String> {
        let h = host(&ctx);
        let mut session = chat
            .0
            .lock()
            .map_err(|_| runtime("chat: session lock poisoned"))?;
        let stream = session.stream;
        let reply = session
            .ask(text, &h.cancel, &mut |t| {
                if stream {
                    h.output.write(t)
                }
            })
            .script()?;
        if stream {
            h.output.write("\n");
        }
        Ok(reply.text.trim().to_string())
    }

    /// The conversation so far: `[#{ role, content }]`.
    #[rhai_fn(global, return_raw, pure)]
    pub fn history(chat: &mut Chat) -> ScriptResult<Array> {
        let session = chat
            .0
            .lock()
            .map_err(|_| runtime("chat: session lock poisoned"))?;
        Ok(session
            .history
            .iter()
            .map(|m| {
                let mut map = Map::new();
                map.insert("role".into(), m.role.as_str().into());
                map.insert("content".into(), m.content.clone().into());
                Dynamic::from_map(map)
            })
            .collect())
    }

    /// Forget the conversation (the system prompt stays).
    #[rhai_fn(global, return_raw, pure)]
    pub fn reset(chat: &mut Chat) -> ScriptResult<()> {
        chat.0
            .lock()
            .map_err(|_| runtime("chat: session lock poisoned"))?
            .reset();
        Ok(())
    }

    /// The session's model, template and length.
    #[rhai_fn(global, name = "to_string", pure)]
    pub fn chat_to_string(chat: &mut Chat) -> String {
        match chat.0.lock() {
            Ok(s) => format!(
                "Chat with {} (template: {}), {} messages",
                s.model.config().architecture,
                s.template.name(),
                s.history.len()
            ),
            Err(_) => "Chat (unavailable)".into(),
        }
    }

    /// Inference speed as llama-bench measures it: options `prompt_tokens` (128), `new_tokens` (64),
    /// `reps` (3). Returns `#{ prompt_tokens, new_tokens, prompt_tok_s, generate_tok_s }`.
    #[rhai_fn(return_raw)]
    pub fn bench_inference(ctx: NativeCallContext, model: Model, opts: Map) -> ScriptResult<Map> {
        let o = Options::new(
            "bench_inference options",
            opts,
            &["prompt_tokens", "new_tokens", "reps"],
        )?;
        let pp = o.int("prompt_tokens")?.unwrap_or(128).max(1) as usize;
        let tg = o.int("new_tokens")?.unwrap_or(64).max(0) as usize;
        let reps = o.int("reps")?.unwrap_or(3).max(1) as usize;
        let s = crate::model::bench::bench(&model, pp, tg, reps, &host(&ctx).cancel).script()?;
        let mut m = Map::new();
        m.insert(
            "prompt_tokens".into(),
            Dynamic::from(s.prompt_tokens as INT),
        );
        m.insert(
            "new_tokens".into(),
            Dynamic::from(s.generated_tokens as INT),
        );
        m.insert("prompt_tok_s".into(), Dynamic::from(s.prompt_tok_s));
        m.insert("generate_tok_s".into(), Dynamic::from(s.generate_tok_s));
        Ok(m)
    }

    /// Perplexity as llama-perplexity computes it: `text_or_path` is text or a file; options
    /// `ctx` (window, default 512), `chunks` (at most this many windows, as llama-perplexity's
    /// `--chunks`), `adapter` (a LoRA adapter or its folder, applied to the model). Returns
    /// `#{ ppl, tokens, chunks, nll }`.
    #[rhai_fn(return_raw)]
    pub fn perplexity(
        ctx: NativeCallContext,
        model: Model,
        text_or_path: &str,
        opts: Map,
    ) -> ScriptResult<Map> {
        let o = Options::new("perplexity options", opts, &["ctx", "chunks", "adapter"])?;
        let adapter = match o.value("adapter") {
            Some(v) => Some(fitting_adapter(v, &model, "perplexity options")?),
            None => None,
        };
        let window = o.int("ctx")?.unwrap_or(512).max(0) as usize;
        let chunks = o.int("chunks")?.map(|c| c.max(1) as usize);
        let text = if Path::new(text_or_path).is_file() {
            std::fs::read_to_string(text_or_path)
                .map_err(|e| crate::Error::io(text_or_path, e))
                .script()?
        } else {
            text_or_path.to_string()
        };
        let p = perplexity::perplexity(
            &model,
            &text,
            window,
            chunks,
            adapter.as_ref(),
            &host(&ctx).cancel,
        )
        .script()?;
        let mut m = Map::new();
        m.insert("ppl".into(), Dynamic::from(p.ppl));
        m.insert("nll".into(), Dynamic::from(p.nll));
        m.insert("tokens".into(), Dynamic::from(p.tokens as INT));
        m.insert("chunks".into(), Dynamic::from(p.chunks as INT));
        Ok(m)
    }

    /// How closely `candidate` (the same model loaded on another device or dtype) agrees with
    /// `reference`: logits and LoRA gradients on one random batch. Options `batch` (2), `seq`
    /// (64), `rank` (8), `seed` (0). Returns `#{ reference, candidate, dtype, logits_rel,
    /// logits_max_abs, infer_logits_rel, top1_agreement, loss_reference, loss_candidate, grad_rel, grad_min_cosine,
    /// optimizer_rel, ok, failures, summary }`; `ok` judges by the candidate dtype's tolerances.
    #[rhai_fn(name = "parity", return_raw)]
    pub fn parity_with(reference: Model, candidate: Model, opts: Map) -> ScriptResult<Map> {
        let o = Options::new("parity options", opts, &["batch", "seq", "rank", "seed"])?;
        let d = crate::model::parity::ParityOptions::default();
        let po = crate::model::parity::ParityOptions {
            batch: o.int("batch")?.map_or(d.batch, |v| v.max(1) as usize),
            seq: o.int("seq")?.map_or(d.seq, |v| v.max(2) as usize),
            rank: o.int("rank")?.map_or(d.rank, |v| v.max(1) as usize),
            seed: o.int("seed")?.map_or(d.seed, |v| v as u64),
        };
        let p = crate::model::parity::parity(&reference, &candidate, &po).script()?;
        let failures = p.failures();
        let mut m = Map::new();
        m.insert("reference".into(), p.reference.clone().into());
        m.insert("candidate".into(), p.candidate.clone().into());
        m.insert(
            "dtype".into(),
            crate::model::parity::dtype_name(p.dtype).into(),
        );
        for (k, v) in [
            ("logits_rel", p.logits_rel),
            ("logits_max_abs", p.logits_max_abs),
            ("infer_logits_rel", p.infer_logits_rel),
            ("top1_agreement", p.top1_agreement),
            ("loss_reference", p.loss_reference),
            ("loss_candidate", p.loss_candidate),
            ("grad_rel", p.grad_rel),
            ("grad_min_cosine", p.grad_min_cosine),
            ("optimizer_rel", p.optimizer_rel),
        ] {
            m.insert(k.into(), Dynamic::from(v));
        }
        m.insert("ok".into(), Dynamic::from(failures.is_empty()));
        m.insert(
            "failures".into(),
            Dynamic::from(failures.into_iter().map(Dynamic::from).collect::<Array>()),
        );
        m.insert("summary".into(), p.to_string().into());
        Ok(m)
    }

    /// [`parity`] with the default options.
    #[rhai_fn(name = "parity", return_raw)]
    pub fn parity(reference: Model, candidate: Model) -> ScriptResult<Map> {
        parity_with(reference, candidate, Map::new())
    }
}
