//! Chat sessions: a system prompt, a growing history, and a template that turns them into the
//! prompt for each new reply (a built-in LLaMA-Factory template, or the model's own Jinja one).

use super::{generate, GenerateOptions, Generated};
use crate::cancel::CancelToken;
use crate::data::template::{self, render_jinja, Template, Tokens};
use crate::data::{Message, Role};
use crate::error::Result;
use crate::model::Model;

/// How prompts are written.
#[derive(Debug, Clone)]
pub enum TemplateChoice {
    BuiltIn(&'static Template),
    /// The model's Jinja `chat_template`.
    Jinja(String),
}

impl TemplateChoice {
    /// `name` for a built-in, or `auto`: the model's own template when it has one, else `chatml`
    /// for the tiny preset (its tokenizer has the ChatML tokens) and LLaMA-Factory's `default`.
    pub fn resolve(name: &str, model: &Model) -> Result<TemplateChoice> {
        if name == "auto" {
            return Ok(match &model.chat_template {
                Some(t) => TemplateChoice::Jinja(t.clone()),
                None if model.format == "tiny" => TemplateChoice::BuiltIn(template::get("chatml")?),
                None => TemplateChoice::BuiltIn(template::get("default")?),
            });
        }
        Ok(TemplateChoice::BuiltIn(template::get(name)?))
    }

    /// A short name for printing.
    pub fn name(&self) -> &str {
        match self {
            TemplateChoice::BuiltIn(t) => t.name,
            TemplateChoice::Jinja(_) => "the model's own (Jinja)",
        }
    }

    /// The prompt text for `messages` ending where the assistant's reply starts.
    pub fn prompt(&self, system: &str, messages: &[Message], model: &Model) -> Result<String> {
        let tokens = Tokens {
            bos: model.bos_token.clone().unwrap_or_default(),
            eos: model.eos_token.clone().unwrap_or_default(),
            today: String::new(),
        };
        match self {
            TemplateChoice::BuiltIn(t) => t.render(system, "", messages, &tokens),
            TemplateChoice::Jinja(j) => render_jinja(j, system, messages, None, true, &tokens),
        }
    }

    /// Token ids that end a reply under this template (its stop words).
    pub fn stop_ids(&self, model: &Model) -> Vec<u32> {
        match self {
            TemplateChoice::BuiltIn(t) => t
                .stop_words
                .iter()
                .filter_map(|w| model.tokenizer.token_id(w))
                .collect(),
            TemplateChoice::Jinja(_) => Vec::new(),
        }
    }
}

/// A conversation with a model.
#[derive(Debug, Clone)]
pub struct ChatSession {
    pub model: Model,
    pub template: TemplateChoice,
    pub system: String,
    pub history: Vec<Message>,
    pub options: GenerateOptions,
    /// Whether replies are printed as they are generated.
    pub stream: bool,
}

impl ChatSession {
    pub fn new(
        model: Model,
        template: TemplateChoice,
        system: String,
        options: GenerateOptions,
    ) -> Self {
        ChatSession {
            model,
            template,
            system,
            history: Vec::new(),
            options,
            stream: true,
        }
    }

    /// Send `text`, stream the reply through `on_text`, keep both in the history.
    pub fn ask(
        &mut self,
        text: &str,
        cancel: &CancelToken,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generated> {
        let mut messages = self.history.clone();
        messages.push(Message::new(Role::User, text));
        let prompt = self.template.prompt(&self.system, &messages, &self.model)?;
        let ids = self.model.tokenizer.encode(&prompt)?;
        let mut options = self.options.clone();
        options.stop_ids.extend(self.template.stop_ids(&self.model));
        let reply = generate(&self.model, &ids, &options, cancel, on_text)?;
        self.history = messages;
        self.history
            .push(Message::new(Role::Assistant, reply.text.trim().to_string()));
        Ok(reply)
    }

    /// Forget the conversation (the system prompt stays).
    pub fn reset(&mut self) {
        self.history.clear();
    }
}
