//! From datasets to training items: pick the template, apply `max_samples` and the validation
//! split, encode every example (LLaMA-Factory's rules, [`crate::data::encode`]) and pack when
//! asked. Examples left with nothing to learn (every label masked, e.g. a reply cut away by
//! `cutoff_len`) are counted and dropped, as they would only add zero-weight compute.

use super::batch::Item;
use super::config::SftConfig;
use crate::data::encode::{encode_example, pack, EncodeOptions};
use crate::data::template::{self, Template, Tokens};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::Model;

/// Encoded data, ready for batching.
pub struct Prepared {
    pub template: &'static Template,
    pub train: Vec<Item>,
    pub eval: Vec<Item>,
    pub pad_id: u32,
    /// Train examples dropped for having no label left.
    pub dropped: usize,
    /// Train examples before packing.
    pub num_examples: usize,
}

/// The built-in template for `name`, or when empty the one the model's special tokens suggest
/// (ChatML markers → chatml, Llama 3 headers → llama3, else LLaMA-Factory's `default`).
pub fn resolve_template(name: &str, model: &Model) -> Result<&'static Template> {
    if !name.is_empty() && name != "auto" {
        return template::get(name);
    }
    let tok = &model.tokenizer;
    let guess = if tok.token_id("<|im_start|>").is_some() && tok.token_id("<|im_end|>").is_some() {
        "chatml"
    } else if tok.token_id("<|start_header_id|>").is_some() {
        "llama3"
    } else {
        "default"
    };
    template::get(guess)
}

/// Token ids for the template's bos/eos pieces on this model.
pub fn encode_options(
    template: &Template,
    model: &Model,
    cutoff_len: usize,
    cfg: &SftConfig,
) -> Result<EncodeOptions> {
    let tok = &model.tokenizer;
    let tokens = Tokens {
        bos: model.bos_token.clone().unwrap_or_default(),
        eos: model.eos_token.clone().unwrap_or_default(),
        today: String::new(),
    };
    let eos = template.eos(&tokens);
    let eos_id = tok.token_id(&eos).ok_or_else(|| {
        Error::config(
            "template",
            format!(
                "\"{}\" ends replies with \"{eos}\", which the model's vocabulary lacks; \
                 pick a template that matches the model (template_names() lists them)",
                template.name
            ),
        )
    })?;
    Ok(EncodeOptions {
        cutoff_len,
        train_on_prompt: cfg.train_on_prompt,
        mask_history: cfg.mask_history,
        bos_id: model.bos_token.as_deref().and_then(|b| tok.token_id(b)),
        eos_id,
        today: String::new(),
    })
}

/// Encode `train` (and the evaluation data) for `cfg`.
pub fn prepare(model: &Model, train: &Dataset, cfg: &SftConfig) -> Result<Prepared> {
    let template = resolve_template(&cfg.template, model)?;
    let mut train = match cfg.max_samples {
        Some(n) => train.take(n),
        None => train.clone(),
    };
    let mut eval = cfg.eval_dataset.clone();
    if eval.is_none() && cfg.val_size > 0.0 {
        let n = train.val_count(cfg.val_size).ok_or_else(|| {
            Error::config(
                "val_size",
                format!(
                    "{} leaves no training examples out of {}",
                    cfg.val_size,
                    train.len()
                ),
            )
        })?;
        let (t, v) = train.split(n, cfg.seed);
        train = t;
        eval = Some(v);
    }
    if train.is_empty() {
        return Err(Error::msg(format!(
            "sft: the dataset \"{}\" has no examples to train on",
            train.name()
        )));
    }
    // Packing reserves one position, as LLaMA-Factory (`cutoff_len -= 1`).
    let cutoff = if cfg.packing || cfg.neat_packing {
        cfg.cutoff_len - 1
    } else {
        cfg.cutoff_len
    };
    let opts = encode_options(template, model, cutoff, cfg)?;
    let tok = &model.tokenizer;
    let tokenize = |s: &str| tok.encode(s);
    let encode_all = |ds: &Dataset| -> Result<(Vec<_>, usize)> {
        let mut kept = Vec::with_capacity(ds.len());
        let mut dropped = 0;
        for (i, ex) in ds.iter().enumerate() {
            let e = encode_example(ex, template, &opts, &tokenize)
                .map_err(|e| Error::msg(format!("dataset \"{}\" example {i}: {e}", ds.name())))?;
            if e.labels
                .iter()
                .skip(1)
                .all(|&l| l == crate::data::encode::IGNORE)
            {
                dropped += 1;
            } else {
                kept.push(e);
            }
        }
        Ok((kept, dropped))
    };
    let (encoded, dropped) = encode_all(&train)?;
    let num_examples = encoded.len();
    let pad_id = opts.eos_id;
    let items: Vec<Item> = if cfg.packing || cfg.neat_packing {
        let (rows, too_long) = pack(encoded, cfg.cutoff_len, pad_id, cfg.neat_packing);
        debug_assert_eq!(too_long, 0, "encoding already cut examples to the capacity");
        rows.into_iter()
            .map(|r| Item::packed(r, cfg.neat_packing))
            .collect()
    } else {
        encoded.into_iter().map(Item::from).collect()
    };
    if items.is_empty() {
        return Err(Error::msg(format!(
            "sft: every example of \"{}\" lost its reply to cutoff_len {} (or has none); raise cutoff_len",
            train.name(),
            cfg.cutoff_len
        )));
    }
    let eval_items = match &eval {
        Some(ds) => encode_all(ds)?.0.into_iter().map(Item::from).collect(),
        None => Vec::new(),
    };
    Ok(Prepared {
        template,
        train: items,
        eval: eval_items,
        pad_id,
        dropped,
        num_examples,
    })
}
