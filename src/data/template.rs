//! Chat templates: LLaMA-Factory's built-in ones with their exact strings, and any Jinja
//! `chat_template` a model carries (rendered with minijinja).
//!
//! Facts (specs/llamafactory.md §3): a template is a set of formatters made of slots (text with
//! `{{content}}`, or the bos/eos token). Message 0 gets the prefix and, when there is a system
//! prompt (the example's, or the template's default), the system formatter; then each message its
//! role's formatter. With `replace_eos` the eos token is the template's first stop word.
//! `llama2` folds the system prompt into the first user turn.
//!
//! Tools: when an example has a tool list (or a system prompt), message 0 also gets the system
//! formatter with `system + tool_text` (see [`super::tools`]); function-call turns go through the
//! template's tool style. Jinja templates receive `tools` and render them as the model says.

use minijinja::{context, Environment};

use super::example::{Message, Role};
use super::tools::{function_text, tool_text, ToolFormat};
use crate::error::{Error, Result};

/// One piece of a formatter.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Slot {
    /// Text in which `{{content}}` is replaced.
    Text(&'static str),
    Bos,
    Eos,
}

use Slot::{Bos, Eos, Text};

/// A built-in template.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: &'static str,
    prefix: &'static [Slot],
    system: &'static [Slot],
    user: &'static [Slot],
    assistant: &'static [Slot],
    observation: &'static [Slot],
    function: &'static [Slot],
    /// Used when an example has no system prompt.
    pub default_system: &'static str,
    /// Extra strings that end generation; the first replaces eos when `replace_eos`.
    pub stop_words: &'static [&'static str],
    pub replace_eos: bool,
    /// `llama2`: the system text goes inside the first user turn.
    system_in_first_user: bool,
    /// How tool lists and function calls are written.
    pub tool_format: ToolFormat,
}

const CHATML_USER: &[Slot] = &[Text(
    "<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",
)];
const CHATML_ASSISTANT: &[Slot] = &[Text("{{content}}<|im_end|>\n")];
const CHATML_SYSTEM: &[Slot] = &[Text("<|im_start|>system\n{{content}}<|im_end|>\n")];
const DEFAULT_ASSISTANT: &[Slot] = &[Text("{{content}}"), Eos];

/// Every built-in template, in LLaMA-Factory's definitions.
pub const TEMPLATES: &[Template] = &[
    Template {
        name: "default",
        prefix: &[],
        system: &[Text("System: {{content}}"), Eos, Text("\n")],
        user: &[Text("Human: {{content}}"), Eos, Text("\nAssistant:")],
        assistant: &[Text("{{content}}"), Eos, Text("\n")],
        observation: &[Text("Human: {{content}}"), Eos, Text("\nAssistant:")],
        function: &[Text("{{content}}"), Eos, Text("\n")],
        default_system: "",
        stop_words: &[],
        replace_eos: false,
        system_in_first_user: false,
        tool_format: ToolFormat::Default,
    },
    Template {
        name: "empty",
        prefix: &[],
        system: &[Text("{{content}}")],
        user: &[Text("{{content}}")],
        assistant: &[Text("{{content}}")],
        observation: &[Text("{{content}}")],
        function: &[Text("{{content}}")],
        default_system: "",
        stop_words: &[],
        replace_eos: false,
        system_in_first_user: false,
        tool_format: ToolFormat::Default,
    },
    Template {
        name: "alpaca",
        prefix: &[],
        system: &[Text("{{content}}")],
        user: &[Text("### Instruction:\n{{content}}\n\n### Response:\n")],
        assistant: &[Text("{{content}}"), Eos, Text("\n\n")],
        observation: &[Text("### Instruction:\n{{content}}\n\n### Response:\n")],
        function: &[Text("{{content}}"), Eos, Text("\n\n")],
        default_system: "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n",
        stop_words: &[],
        replace_eos: false,
        system_in_first_user: false,
        tool_format: ToolFormat::Default,
    },
    Template {
        name: "vicuna",
        prefix: &[],
        system: &[Text("{{content}}")],
        user: &[Text("USER: {{content}} ASSISTANT:")],
        assistant: DEFAULT_ASSISTANT,
        observation: &[Text("USER: {{content}} ASSISTANT:")],
        function: DEFAULT_ASSISTANT,
        default_system: "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.",
        stop_words: &[],
        replace_eos: false,
        system_in_first_user: false,
        tool_format: ToolFormat::Default,
    },
    Template {
        name: "chatml",
        prefix: &[],
        system: CHATML_SYSTEM,
        user: CHATML_USER,
        assistant: CHATML_ASSISTANT,
        observation: &[Text("<|im_start|>tool\n{{content}}<|im_end|>\n<|im_start|>assistant\n")],
        function: CHATML_ASSISTANT,
        default_system: "",
        stop_words: &["<|im_end|>", "<|im_start|>"],
        replace_eos: true,
        system_in_first_user: false,
        tool_format: ToolFormat::Default,
    },
    Template {
        name: "qwen",
        prefix: &[],
        system: CHATML_SYSTEM,
        user: CHATML_USER,
        assistant: CHATML_ASSISTANT,
        observation: &[Text("<|im_start|>user\n<tool_response>\n{{content}}\n</tool_response><|im_end|>\n<|im_start|>assistant\n")],
        function: CHATML_ASSISTANT,
        default_system: "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        stop_words: &["<|im_end|>"],
        replace_eos: true,
        system_in_first_user: false,
        tool_format: ToolFormat::Qwen,
    },
    Template {
        name: "llama3",
        prefix: &[Bos],
        system: &[Text("<|start_header_id|>system<|end_header_id|>\n\n{{content}}<|eot_id|>")],
        user: &[Text("<|start_header_id|>user<|end_header_id|>\n\n{{content}}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")],
        assistant: &[Text("{{content}}<|eot_id|>")],
        observation: &[Text("<|start_header_id|>ipython<|end_header_id|>\n\n{{content}}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")],
        function: &[Text("{{content}}<|eot_id|>")],
        default_system: "",
        stop_words: &["<|eot_id|>", "<|eom_id|>"],
        replace_eos: true,
        system_in_first_user: false,
        tool_format: ToolFormat::Llama3,
    },
    Template {
        name: "llama2",
        prefix: &[],
        system: &[Text("<<SYS>>\n{{content}}\n<</SYS>>\n\n")],
        user: &[Bos, Text("[INST] {{content}} [/INST]")],
        assistant: DEFAULT_ASSISTANT,
        observation: &[Bos, Text("[INST] {{content}} [/INST]")],
        function: DEFAULT_ASSISTANT,
        default_system: "",
        stop_words: &[],
        replace_eos: false,
        system_in_first_user: true,
        tool_format: ToolFormat::Default,
    },
];

/// Names of the built-in templates.
pub fn names() -> Vec<&'static str> {
    TEMPLATES.iter().map(|t| t.name).collect()
}

/// The built-in template `name`.
pub fn get(name: &str) -> Result<&'static Template> {
    TEMPLATES.iter().find(|t| t.name == name).ok_or_else(|| {
        Error::config(
            "template",
            format!(
                "unknown template \"{name}\"; built-in: {}, or \"auto\" for the model's own",
                names().join(", ")
            ),
        )
    })
}

/// The special-token strings a rendering uses, and the date tool prompts mention.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    pub bos: String,
    pub eos: String,
    /// "27 Nov 2026" style; empty means today.
    pub today: String,
}

/// Today's date as LLaMA-Factory's llama3 tool prompt writes it (`%d %b %Y`).
pub fn today() -> String {
    let (year, month, day, ..) = crate::clock::utc_now();
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!("{day:02} {} {year}", MONTHS[(month - 1) as usize])
}

/// The bos/eos strings a template's family uses, for rendering without a model.
pub fn default_tokens(name: &str) -> Tokens {
    match name {
        "llama3" => Tokens {
            bos: "<|begin_of_text|>".into(),
            eos: "<|end_of_text|>".into(),
            today: String::new(),
        },
        "chatml" | "qwen" => Tokens {
            bos: String::new(),
            eos: "<|im_end|>".into(),
            today: String::new(),
        },
        _ => Tokens {
            bos: "<s>".into(),
            eos: "</s>".into(),
            today: String::new(),
        },
    }
}

/// One element of a rendered turn, as LLaMA-Factory encodes it: each text is tokenized on its own
/// (special-token strings inside it become their ids) and bos/eos become the tokenizer's ids.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    Bos,
    Eos,
}

impl Template {
    fn apply(&self, slots: &[Slot], content: &str, out: &mut Vec<Piece>) {
        for slot in slots {
            match slot {
                Text(t) => {
                    let text = t.replace("{{content}}", content);
                    if !text.is_empty() {
                        out.push(Piece::Text(text));
                    }
                }
                Bos => out.push(Piece::Bos),
                Eos => out.push(Piece::Eos),
            }
        }
    }

    /// The formatters as plain text with bos/eos written out, for the Ollama Modelfile and the
    /// Jinja template an export writes ([`super::template_export`]). bos only when `tokens` has one.
    pub fn flat(&self, tokens: &Tokens) -> super::template_export::FlatTemplate {
        let text = |slots: &[Slot]| -> String {
            slots
                .iter()
                .map(|s| match s {
                    Text(t) => t.to_string(),
                    Bos => tokens.bos.clone(),
                    Eos => self.eos(tokens),
                })
                .collect()
        };
        let mut stop = vec![self.eos(tokens)];
        for w in self.stop_words {
            if !stop.iter().any(|s| s == w) {
                stop.push(w.to_string());
            }
        }
        stop.retain(|s| !s.is_empty());
        super::template_export::FlatTemplate {
            prefix: text(self.prefix),
            system: text(self.system),
            user: text(self.user),
            assistant: text(self.assistant),
            default_system: self.default_system.to_string(),
            stop,
        }
    }

    /// The eos string: the first stop word when the template replaces eos.
    pub fn eos(&self, tokens: &Tokens) -> String {
        match (self.replace_eos, self.stop_words.first()) {
            (true, Some(stop)) => stop.to_string(),
            _ => tokens.eos.clone(),
        }
    }

    /// Render `messages` (user/assistant/observation/function turns) with `system` and the JSON
    /// tool list `tools` ("" for none); the text ends where the model's reply starts when the
    /// last message is a user or observation turn.
    pub fn render(
        &self,
        system: &str,
        tools: &str,
        messages: &[Message],
        tokens: &Tokens,
    ) -> Result<String> {
        let mut out = String::new();
        for piece in self
            .turns(system, tools, messages, &tokens.today)?
            .iter()
            .flatten()
        {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Bos => out.push_str(&tokens.bos),
                Piece::Eos => out.push_str(&self.eos(tokens)),
            }
        }
        Ok(out)
    }

    /// The pieces of each message, in order (LLaMA-Factory's `Template._encode` before
    /// tokenization): message 0 also carries the prefix and the system prompt. `today` dates the
    /// llama3 tool prompt ("" for today).
    pub fn turns(
        &self,
        system: &str,
        tools: &str,
        messages: &[Message],
        today_text: &str,
    ) -> Result<Vec<Vec<Piece>>> {
        let system = if system.is_empty() {
            self.default_system
        } else {
            system
        };
        let mut turns = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let mut out = Vec::new();
            let mut content = m.content.clone();
            if m.role == Role::Function {
                content = function_text(self.tool_format, &content)?;
            }
            if i == 0 {
                self.apply(self.prefix, "", &mut out);
                // As LLaMA-Factory: `if system or tools` (a "[]" tool list counts).
                if !system.is_empty() || !tools.is_empty() {
                    let today = if today_text.is_empty() {
                        today()
                    } else {
                        today_text.to_string()
                    };
                    let tool_part = if tools.is_empty() {
                        String::new()
                    } else {
                        tool_text(self.tool_format, tools, &today)?
                    };
                    let full = format!("{system}{tool_part}");
                    if self.system_in_first_user {
                        let mut sys = Vec::new();
                        self.apply(self.system, &full, &mut sys);
                        let text: String = sys
                            .iter()
                            .map(|p| match p {
                                Piece::Text(t) => t.as_str(),
                                _ => "",
                            })
                            .collect();
                        content = text + content.as_str();
                    } else {
                        self.apply(self.system, &full, &mut out);
                    }
                }
            }
            let slots = match m.role {
                Role::User | Role::System => self.user,
                Role::Assistant => self.assistant,
                Role::Observation => self.observation,
                Role::Function => self.function,
            };
            self.apply(slots, &content, &mut out);
            turns.push(out);
        }
        Ok(turns)
    }
}

/// Render a model's own Jinja `chat_template` (Hugging Face conventions: `messages` with `role`
/// and `content`, `add_generation_prompt`, `bos_token`, `eos_token`, `tools`).
pub fn render_jinja(
    template: &str,
    system: &str,
    messages: &[Message],
    tools: Option<&serde_json::Value>,
    add_generation_prompt: bool,
    tokens: &Tokens,
) -> Result<String> {
    let mut env = Environment::new();
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_function("strftime_now", |fmt: String| -> String {
        // Templates use this for "Today Date"; a fixed date keeps renders reproducible.
        fmt.replace("%d", "27")
            .replace("%b", "Nov")
            .replace("%B", "November")
            .replace("%Y", "2026")
            .replace("%m", "11")
    });
    env.add_template("chat", template)
        .map_err(|e| Error::msg(format!("chat template does not parse: {e}")))?;
    let mut list: Vec<serde_json::Value> = Vec::new();
    if !system.is_empty() {
        list.push(serde_json::json!({"role": "system", "content": system}));
    }
    for m in messages {
        let role = match m.role {
            Role::Observation => "tool",
            Role::Function => "assistant",
            r => r.as_str(),
        };
        list.push(serde_json::json!({"role": role, "content": m.content}));
    }
    let tmpl = env
        .get_template("chat")
        .map_err(|e| Error::msg(e.to_string()))?;
    tmpl.render(context! {
        messages => list,
        add_generation_prompt => add_generation_prompt,
        bos_token => tokens.bos,
        eos_token => tokens.eos,
        tools => tools,
    })
    .map_err(|e| Error::msg(format!("chat template failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(parts: &[(Role, &str)]) -> Vec<Message> {
        parts.iter().map(|(r, c)| Message::new(*r, *c)).collect()
    }

    fn llama3_tokens() -> Tokens {
        Tokens {
            bos: "<|begin_of_text|>".into(),
            eos: "<|end_of_text|>".into(),
            today: "27 Nov 2026".into(),
        }
    }

    #[test]
    fn llama3_sft_example_renders_as_llamafactory_does() {
        // specs/llamafactory.md §3, "Rendered llama3 SFT example".
        let m = conv(&[
            (Role::User, "Instruction\ninput"),
            (Role::Assistant, "Output"),
        ]);
        assert_eq!(
            get("llama3").unwrap().render("", "", &m, &llama3_tokens()).unwrap(),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nInstruction\ninput<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nOutput<|eot_id|>"
        );
    }

    #[test]
    fn multi_turn_with_system_in_each_family() {
        let m = conv(&[
            (Role::User, "hi"),
            (Role::Assistant, "hello"),
            (Role::User, "bye"),
        ]);
        let t = Tokens {
            bos: "<s>".into(),
            eos: "</s>".into(),
            today: String::new(),
        };
        assert_eq!(
            get("chatml").unwrap().render("Be kind.", "", &m, &t).unwrap(),
            "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nbye<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            get("default")
                .unwrap()
                .render("Be kind.", "", &m, &t)
                .unwrap(),
            "System: Be kind.</s>\nHuman: hi</s>\nAssistant:hello</s>\nHuman: bye</s>\nAssistant:"
        );
        assert_eq!(
            get("llama2")
                .unwrap()
                .render("Be kind.", "", &m, &t)
                .unwrap(),
            "<s>[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\nhi [/INST]hello</s><s>[INST] bye [/INST]"
        );
        assert_eq!(
            get("qwen").unwrap().render("", "", &m[..1], &t).unwrap(),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            get("alpaca").unwrap().render("", "", &m[..2], &t).unwrap(),
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nhi\n\n### Response:\nhello</s>\n\n"
        );
        assert_eq!(
            get("empty").unwrap().render("", "", &m[..2], &t).unwrap(),
            "hihello"
        );
        assert_eq!(get("chatml").unwrap().eos(&t), "<|im_end|>");
    }

    #[test]
    fn tools_and_function_calls_render_in_each_style() {
        let tools = r#"[{"name": "weather", "description": "Get the weather", "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City"}}, "required": ["city"]}}]"#;
        let m = conv(&[
            (Role::User, "Weather in Paris?"),
            (
                Role::Function,
                r#"{"name": "weather", "arguments": {"city": "Paris"}}"#,
            ),
            (Role::Observation, "sunny"),
            (Role::Assistant, "Sunny."),
        ]);
        let t = Tokens {
            bos: "<s>".into(),
            eos: "</s>".into(),
            today: "27 Nov 2026".into(),
        };
        let chatml = get("chatml").unwrap().render("", tools, &m, &t).unwrap();
        assert!(chatml.starts_with("<|im_start|>system\nYou have access to the following tools:\n> Tool Name: weather\n"), "{chatml}");
        assert!(chatml.contains("<|im_start|>assistant\nAction: weather\nAction Input: {\"city\": \"Paris\"}<|im_end|>\n<|im_start|>tool\nsunny<|im_end|>\n<|im_start|>assistant\nSunny.<|im_end|>\n"), "{chatml}");
        let qwen = get("qwen").unwrap().render("", tools, &m, &t).unwrap();
        assert!(qwen.starts_with("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n# Tools\n\nYou may call one or more functions"), "{qwen}");
        assert!(
            qwen.contains("<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"weather\""),
            "{qwen}"
        );
        assert!(qwen.contains("<|im_start|>assistant\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n"), "{qwen}");
        let llama3 = get("llama3")
            .unwrap()
            .render("", tools, &m, &llama3_tokens())
            .unwrap();
        assert!(llama3.starts_with("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 27 Nov 2026\n\n"), "{llama3}");
        assert!(llama3.contains("{\n    \"type\": \"function\",\n    \"function\": {\n        \"name\": \"weather\","), "{llama3}");
        assert!(llama3.contains("{\"name\": \"weather\", \"parameters\": {\"city\": \"Paris\"}}<|eot_id|><|start_header_id|>ipython<|end_header_id|>\n\nsunny<|eot_id|>"), "{llama3}");
        // An empty tool list still opens a (blank) system block, as LLaMA-Factory does.
        let blank = get("chatml")
            .unwrap()
            .render("", "[]", &m[..1], &t)
            .unwrap();
        assert!(
            blank.starts_with("<|im_start|>system\n<|im_end|>\n<|im_start|>user\n"),
            "{blank}"
        );
    }

    #[test]
    fn today_is_a_plausible_date() {
        let d = today();
        assert_eq!(d.len(), 11, "{d}");
        assert!(d[7..].parse::<u32>().unwrap() >= 2024);
    }

    #[test]
    fn jinja_template_renders_smollm2_style_chatml() {
        let smol = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let m = conv(&[(Role::User, "What is 2+2?")]);
        let text = render_jinja(smol, "", &m, None, true, &Tokens::default()).unwrap();
        assert_eq!(text, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n");
        let with_strip = "{{ messages[0]['content'].strip() }}";
        assert_eq!(
            render_jinja(
                with_strip,
                "",
                &conv(&[(Role::User, "  x  ")]),
                None,
                false,
                &Tokens::default()
            )
            .unwrap(),
            "x"
        );
        assert!(render_jinja(
            "{{ raise_exception('no') }}",
            "",
            &m,
            None,
            false,
            &Tokens::default()
        )
        .is_err());
    }

    #[test]
    fn unknown_template_lists_the_built_ins() {
        let e = get("chatgpt").unwrap_err().to_string();
        assert!(e.contains("llama3") && e.contains("chatml"), "{e}");
    }
}
