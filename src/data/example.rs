//! The normalized training example every dataset format converts into.
//!
//! LLaMA-Factory's converters produce `_prompt` (odd length), `_response` (one message), `_system`
//! and `_tools`; tunelab keeps the same content as one list: `messages` = prompt + response, so a
//! valid example alternates user-side (user | observation) and assistant-side (assistant |
//! function) turns, starts on the user side and ends on the assistant side. The system prompt and
//! the tool list (a JSON string, as LLaMA-Factory passes it) sit beside the messages.

use std::fmt;

/// Who says a message. The names match LLaMA-Factory's `Role` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    User,
    Assistant,
    System,
    /// A tool call written by the assistant.
    Function,
    /// A tool's result, fed back on the user side.
    Observation,
}

impl Role {
    /// Every role, in LLaMA-Factory's order.
    pub const ALL: [Role; 5] = [
        Role::User,
        Role::Assistant,
        Role::System,
        Role::Function,
        Role::Observation,
    ];

    /// The lowercase name used in files and scripts.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => "system",
            Role::Function => "function",
            Role::Observation => "observation",
        }
    }

    /// Parse a role name (as `as_str` writes it).
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// User-side turns: the even positions of a conversation.
    pub fn is_prompt_side(self) -> bool {
        matches!(self, Role::User | Role::Observation)
    }

    /// Assistant-side turns: the odd positions, the ones trained on.
    pub fn is_response_side(self) -> bool {
        matches!(self, Role::Assistant | Role::Function)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    /// A message from `role` saying `content`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
        }
    }
}

/// One normalized training example.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Example {
    /// The system prompt ("" when none).
    pub system: String,
    /// The tool list as a JSON string ("" when none).
    pub tools: String,
    /// Alternating user-side / assistant-side turns, ending on the assistant side.
    pub messages: Vec<Message>,
}

impl Example {
    /// Why this example cannot be trained on, or `None` when it is valid: the roles must alternate
    /// user-side / assistant-side starting with the user side, and the count must be even.
    pub fn invalid_reason(&self) -> Option<String> {
        if self.messages.is_empty() {
            return Some("no messages".into());
        }
        for (i, m) in self.messages.iter().enumerate() {
            let (ok, expected) = if i % 2 == 0 {
                (m.role.is_prompt_side(), "a user turn")
            } else {
                (m.role.is_response_side(), "an assistant turn")
            };
            if !ok {
                return Some(format!(
                    "role \"{}\" at position {i}, expected {expected}",
                    m.role
                ));
            }
        }
        if !self.messages.len().is_multiple_of(2) {
            return Some(format!(
                "{} messages: a conversation must end with an assistant turn (an even count)",
                self.messages.len()
            ));
        }
        None
    }

    /// Total characters of the system prompt, tools and every message.
    pub fn chars(&self) -> usize {
        self.system.chars().count()
            + self.tools.chars().count()
            + self
                .messages
                .iter()
                .map(|m| m.content.chars().count())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternation_and_count_are_checked() {
        let mut ex = Example {
            messages: vec![
                Message::new(Role::User, "hi"),
                Message::new(Role::Assistant, "hello"),
            ],
            ..Default::default()
        };
        assert_eq!(ex.invalid_reason(), None);
        ex.messages.swap(0, 1);
        assert_eq!(
            ex.invalid_reason().unwrap(),
            "role \"assistant\" at position 0, expected a user turn"
        );
        ex.messages = vec![Message::new(Role::User, "hi")];
        assert!(ex.invalid_reason().unwrap().contains("even count"));
        ex.messages = vec![
            Message::new(Role::User, "weather?"),
            Message::new(Role::Function, "{\"name\":\"w\"}"),
            Message::new(Role::Observation, "sunny"),
            Message::new(Role::Assistant, "It is sunny."),
        ];
        assert_eq!(ex.invalid_reason(), None);
    }
}
