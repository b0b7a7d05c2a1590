//! The interactive terminal front end: `tunelab` with no arguments.
//!
//! A persistent session: variables live in one [`Scope`], functions defined at the prompt are kept
//! in an AST whose statements are cleared after each input (so nothing re-runs), and `import`s
//! typed at the prompt are replayed before each input so their modules stay visible. Input that
//! does not parse *yet* (`fn f() {`, `[1, 2,`, `foo(1,`) waits for more lines. Ctrl-C at the
//! prompt clears the line; during an evaluation it cancels it (see [`crate::cancel`]); Ctrl-D exits.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rhai::{Dynamic, Engine, EvalAltResult, ParseErrorType, Scope, AST};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Config, Context, Editor, Helper, Highlighter, Hinter};

use crate::script::diagnostic::{source_from_disk_or_stdlib, Diagnostic};
use crate::script::engine::parse_only_engine;
use crate::script::help::{self, FnDoc};
use crate::script::runner::read_script;
use crate::script::{build_engine, stdlib, EngineOptions, HostContext};

/// The REPL's `:commands`, for completion and `:help`.
pub const COMMANDS: &[&str] = &[
    ":help", ":vars", ":load", ":reset", ":time", ":chat", ":end", ":quit",
];

/// What the prompt looks like.
const PROMPT: &str = "tunelab> ";
/// The prompt in `:chat` mode.
const CHAT_PROMPT: &str = "you> ";

/// The variable `:chat` mode hands each typed line over in.
const CHAT_LINE: &str = "chat_line";

/// The name errors give to code typed at the prompt.
const REPL_SOURCE: &str = "<repl>";

/// The rustyline helper: parse-based multi-line input and Tab completion.
#[derive(Helper, Hinter, Highlighter)]
struct LineHelper {
    /// A bare engine used only to parse (never to run) what is being typed.
    parser: Engine,
    /// Function names from the catalogue.
    functions: Vec<String>,
    /// Variable names of the session, refreshed after each input.
    variables: Arc<Mutex<Vec<String>>>,
}

impl Validator for LineHelper {
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        Ok(if is_incomplete(&self.parser, ctx.input()) {
            ValidationResult::Incomplete
        } else {
            ValidationResult::Valid(None)
        })
    }
}

/// Whether `input` is the unfinished start of valid code (so the REPL should wait for more).
pub fn is_incomplete(parser: &Engine, input: &str) -> bool {
    if input.trim_start().starts_with(':') {
        return false;
    }
    let Err(err) = parser.compile(input) else {
        return false;
    };
    let pos = err.position();
    let unfinished = match err.err_type() {
        ParseErrorType::MissingToken(..) | ParseErrorType::UnexpectedEOF => true,
        // Only a backtick string may span lines; an open "..." is a typo to report.
        ParseErrorType::BadInput(rhai::LexError::UnterminatedString) => {
            return char_at(input, pos) == Some('`');
        }
        _ => false,
    };
    // Only an error at the very end means "more to come"; an earlier one is a real mistake.
    let lines: Vec<&str> = input.trim_end().split('\n').collect();
    let last = lines.last().map_or(0, |l| l.chars().count());
    let at_end = match (pos.line(), pos.position()) {
        (None, _) => true,
        (Some(line), column) => {
            line > lines.len() || (line == lines.len() && column.is_none_or(|c| c > last))
        }
    };
    unfinished && at_end
}

/// The character at a Rhai position (1-based line and column) of `text`.
fn char_at(text: &str, pos: rhai::Position) -> Option<char> {
    let line = text.split('\n').nth(pos.line()?.checked_sub(1)?)?;
    line.chars().nth(pos.position()?.checked_sub(1)?)
}

impl Completer for LineHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let start = before
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':' || c == '/'))
            .map_or(0, |i| i + 1);
        let word = &before[start..];
        let mut names: Vec<String> = if before.trim_start().starts_with(':') && start == 0 {
            COMMANDS.iter().map(|c| c.to_string()).collect()
        } else if before[..start].trim_end().ends_with("import \"") || word.starts_with("lab/") {
            stdlib::STDLIB.iter().map(|(p, _)| p.to_string()).collect()
        } else {
            let vars = self.variables.lock().map(|v| v.clone()).unwrap_or_default();
            let calls = self.functions.iter().map(|f| format!("{f}("));
            calls.chain(vars).collect()
        };
        names.retain(|n| n.starts_with(word));
        names.sort();
        names.dedup();
        let pairs = names
            .into_iter()
            .map(|n| Pair {
                display: n.clone(),
                replacement: n,
            })
            .collect();
        Ok((start, pairs))
    }
}

/// One interactive session's state.
pub struct Session {
    ctx: HostContext,
    engine: Engine,
    scope: Scope<'static>,
    /// Functions defined so far (statements always cleared).
    functions: AST,
    /// `import` statements typed so far, replayed before each input.
    imports: Vec<String>,
    /// In `:chat` mode: the expression naming the chat session.
    chat: Option<String>,
    catalog: Vec<FnDoc>,
}

impl Session {
    /// A fresh session printing through `ctx`.
    pub fn new(ctx: HostContext) -> Self {
        let engine = build_engine(
            &ctx,
            &EngineOptions {
                cache_imports: false,
                // Imports typed earlier are replayed at run time, which strict mode cannot see.
                strict_variables: false,
            },
        );
        Session {
            ctx,
            engine,
            scope: Scope::new(),
            functions: AST::empty(),
            imports: Vec::new(),
            chat: None,
            catalog: help::catalog(),
        }
    }

    /// Variable names currently defined.
    pub fn variable_names(&self) -> Vec<String> {
        self.scope
            .iter()
            .map(|(name, _, _)| name.to_string())
            .collect()
    }

    /// Evaluate one input (code or `:command`). Returns the text to show, or the error report.
    /// `Ok(None)` with `quit` set means the user asked to leave.
    pub fn handle(&mut self, input: &str) -> Outcome {
        let trimmed = input.trim();
        if let Some(command) = trimmed.strip_prefix(':') {
            return self.command(command);
        }
        if let Some(chat) = self.chat.clone() {
            // The line is the user's message, passed as a variable (no quoting problems).
            self.scope.set_or_push(CHAT_LINE, trimmed.to_string());
            return match self.eval(&format!("{chat}.ask({CHAT_LINE}); ()"), REPL_SOURCE) {
                Ok(_) => Outcome::Shown(String::new()),
                Err(report) => Outcome::Error(report),
            };
        }
        match self.eval(input, REPL_SOURCE) {
            Ok(value) if value.is_unit() => Outcome::Shown(String::new()),
            Ok(value) => Outcome::Shown(format!("=> {}", self.show(value))),
            Err(report) => Outcome::Error(report),
        }
    }

    fn command(&mut self, command: &str) -> Outcome {
        let (name, arg) = command
            .split_once(char::is_whitespace)
            .map_or((command, ""), |(n, a)| (n, a.trim()));
        match name {
            "q" | "quit" | "exit" => Outcome::Quit,
            "help" | "h" if arg.is_empty() => Outcome::Shown(help::overview(&self.catalog)),
            "help" | "h" => match help::describe(&self.catalog, arg) {
                Some(text) => Outcome::Shown(text),
                None => Outcome::Error(format!(
                    "no function named \"{arg}\"; `:help` lists them all"
                )),
            },
            "vars" => Outcome::Shown(self.vars()),
            "reset" => {
                *self = Session::new(self.ctx.clone());
                Outcome::Shown("session reset: variables, functions and imports cleared".into())
            }
            "load" if arg.is_empty() => Outcome::Error("usage: :load FILE.rhai".into()),
            "load" => {
                let path = PathBuf::from(arg);
                match read_script(&path) {
                    Err(e) => Outcome::Error(e.to_string()),
                    Ok(text) => match self.eval(&text, arg) {
                        Ok(_) => Outcome::Shown(format!("loaded {arg}")),
                        Err(report) => Outcome::Error(report),
                    },
                }
            }
            "chat" if arg.is_empty() => Outcome::Error(
                "usage: :chat EXPR, where EXPR is a chat session, e.g. `let c = chat(load_model(\"tiny\"));` then `:chat c`".into(),
            ),
            "chat" => match self.eval(arg, REPL_SOURCE) {
                Ok(v) if v.type_name().ends_with("Chat") => {
                    self.chat = Some(arg.to_string());
                    Outcome::Shown(format!("chatting with `{arg}`: type a message; `:end` returns to code"))
                }
                Ok(v) => Outcome::Error(format!(":chat needs a chat session (from chat(model)), got {}", v.type_name())),
                Err(report) => Outcome::Error(report),
            },
            "end" => {
                self.chat = None;
                Outcome::Shown(String::new())
            }
            "time" if arg.is_empty() => Outcome::Error("usage: :time EXPRESSION".into()),
            "time" => {
                let start = Instant::now();
                let result = self.eval(arg, REPL_SOURCE);
                let took = start.elapsed().as_secs_f64();
                match result {
                    Ok(v) if v.is_unit() => Outcome::Shown(format!("took {took:.3} s")),
                    Ok(v) => Outcome::Shown(format!("=> {}\ntook {took:.3} s", self.show(v))),
                    Err(report) => Outcome::Error(format!("{report}took {took:.3} s")),
                }
            }
            _ => Outcome::Error(format!(
                "unknown command \":{name}\"; commands: {}",
                COMMANDS.join(" ")
            )),
        }
    }

    /// Compile and run `text` in the session; functions and variables persist.
    fn eval(&mut self, text: &str, source: &str) -> Result<Dynamic, String> {
        self.ctx.cancel.reset();
        let report = |err: &EvalAltResult, text: &str| {
            let d = Diagnostic::new(err, source);
            d.render(&|file| {
                if file == source {
                    Some(text.to_string())
                } else {
                    source_from_disk_or_stdlib(file)
                }
            })
        };
        let mut ast = self
            .engine
            .compile_with_scope(&self.scope, text)
            .map_err(|e| report(&e.into(), text))?;
        ast.set_source(source);
        let mut prelude = self
            .engine
            .compile(self.imports.join("\n"))
            .unwrap_or_default();
        prelude.set_source(REPL_SOURCE);
        let program = prelude.merge(&self.functions).merge(&ast);
        let result = self
            .engine
            .eval_ast_with_scope::<Dynamic>(&mut self.scope, &program);
        // The cancel (if any) has been handled; a later Ctrl-C must not count as a second press.
        self.ctx.cancel.reset();
        // Keep the functions even when the statements failed, as rhai-repl does.
        ast.clear_statements();
        self.functions = self.functions.merge(&ast);
        let value = result.map_err(|e| report(&e, text))?;
        for line in text.lines() {
            if is_import_line(line) {
                self.imports
                    .push(format!("{};", line.trim().trim_end_matches(';')));
            }
        }
        Ok(value)
    }

    /// A value as the REPL shows it (strings quoted), using the type's registered `to_debug`.
    fn show(&self, value: Dynamic) -> String {
        let mut scope = Scope::new();
        scope.push("value", value.clone());
        self.engine
            .eval_with_scope::<String>(&mut scope, "value.to_debug()")
            .unwrap_or_else(|_| format!("{value:?}"))
    }

    fn vars(&self) -> String {
        if self.scope.is_empty() {
            return "(no variables)".into();
        }
        let mut out = String::new();
        for (name, constant, value) in self.scope.iter() {
            let mut shown = self.show(value.clone());
            if shown.chars().count() > 60 {
                shown = shown.chars().take(57).collect::<String>() + "...";
            }
            let kind = if constant { "const" } else { "let" };
            out.push_str(&format!("{kind} {name}: {} = {shown}\n", value.type_name()));
        }
        out
    }
}

/// A top-level `import "..." as x;` line.
fn is_import_line(line: &str) -> bool {
    let t = line.trim();
    t.starts_with("import ") && t.contains(" as ") && !t.contains('{')
}

/// What one input produced.
#[derive(Debug)]
pub enum Outcome {
    /// Text for stdout (may be empty).
    Shown(String),
    /// An error report for stderr.
    Error(String),
    /// `:quit`.
    Quit,
}

/// Where the history file lives: `$TUNELAB_HISTORY`, else the user's data folder.
fn history_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TUNELAB_HISTORY") {
        return Some(PathBuf::from(p));
    }
    Some(dirs::data_dir()?.join("tunelab").join("history.txt"))
}

/// Run the interactive loop until `:quit` or Ctrl-D. `ctx.cancel` must be wired to Ctrl-C.
pub fn run(ctx: HostContext) -> crate::Result<()> {
    let config = Config::builder()
        .auto_add_history(false)
        .tab_stop(4)
        .indent_size(4)
        .build();
    let mut editor: Editor<LineHelper, rustyline::history::DefaultHistory> =
        Editor::with_config(config)
            .map_err(|e| crate::Error::msg(format!("cannot open the terminal: {e}")))?;
    let mut session = Session::new(ctx);
    let variables = Arc::new(Mutex::new(Vec::new()));
    let mut functions: Vec<String> = session.catalog.iter().map(|f| f.name.clone()).collect();
    functions.dedup();
    editor.set_helper(Some(LineHelper {
        parser: parse_only_engine(),
        functions,
        variables: variables.clone(),
    }));
    let history = history_path();
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    let info = crate::version::build_info();
    println!(
        "tunelab {} (rhai {}, candle {}): `:help` lists functions, Ctrl-D quits.",
        info.crates[0].1, info.crates[1].1, info.crates[2].1
    );
    loop {
        let prompt = if session.chat.is_some() {
            CHAT_PROMPT
        } else {
            PROMPT
        };
        match editor.readline(prompt) {
            Ok(line) => {
                if line.trim().is_empty() {
                    continue;
                }
                let _ = editor.add_history_entry(line.as_str());
                match session.handle(&line) {
                    Outcome::Quit => break,
                    Outcome::Shown(text) if text.is_empty() => {}
                    Outcome::Shown(text) => println!("{}", text.trim_end()),
                    Outcome::Error(report) => eprintln!("{}", report.trim_end()),
                }
                if let Ok(mut vars) = variables.lock() {
                    *vars = session.variable_names();
                }
            }
            Err(ReadlineError::Interrupted) => continue, // Ctrl-C at the prompt: clear the line
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("terminal error: {e}");
                break;
            }
        }
    }
    if let Some(path) = &history {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = editor.save_history(path) {
            eprintln!("warning: could not save history to {}: {e}", path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfinished_input_waits_and_mistakes_do_not() {
        let parser = parse_only_engine();
        for unfinished in [
            "fn f() {",
            "[1, 2,",
            "foo(1,",
            "let s = `abc",
            "if x {\n  1",
        ] {
            assert!(is_incomplete(&parser, unfinished), "{unfinished:?}");
        }
        let mistakes = [
            "let = 3;",
            "let s = \"abc",
            "let a = [1, 2;\nlet b = 1;",
            "let x = 1 2",
            "foo(1,;",
        ];
        for done in ["let x = 1;", "x + 2", ":help", "let x = 1"]
            .iter()
            .chain(&mistakes)
        {
            assert!(!is_incomplete(&parser, done), "{done:?}");
        }
    }

    #[test]
    fn session_keeps_variables_functions_and_imports() {
        let mut s = Session::new(HostContext::capture());
        assert!(matches!(s.handle("let x = 40;"), Outcome::Shown(t) if t.is_empty()));
        assert!(matches!(
            s.handle("fn twice(v) { v * 2 }"),
            Outcome::Shown(_)
        ));
        assert!(matches!(
            s.handle("import \"lab/fmt\" as fmt;"),
            Outcome::Shown(_)
        ));
        match s.handle("twice(x) + 2") {
            Outcome::Shown(t) => assert_eq!(t, "=> 82"),
            other => panic!("{other:?}"),
        }
        match s.handle("fmt::percent(0.5)") {
            Outcome::Shown(t) => assert_eq!(t, "=> \"50.0%\""),
            other => panic!("{other:?}"),
        }
        // A statement is not re-run: printing happens once.
        s.handle("print(\"once\");");
        s.handle("1");
        assert_eq!(s.ctx.output.captured().matches("once").count(), 1);
    }

    #[test]
    fn errors_show_the_repl_line_and_caret() {
        let mut s = Session::new(HostContext::capture());
        match s.handle("let y = 1;\nnope(y)") {
            Outcome::Error(report) => {
                assert!(
                    report.starts_with("<repl>:2:1: Function not found: nope"),
                    "{report}"
                );
                assert!(report.contains("  2 | nope(y)\n    | ^"), "{report}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn chat_mode_sends_lines_to_the_session_until_end() {
        let mut s = Session::new(HostContext::capture());
        s.handle("let c = chat(load_model(\"tiny\"), #{ max_new_tokens: 3 });");
        assert!(
            matches!(s.handle(":chat c"), Outcome::Shown(t) if t.contains("chatting with `c`"))
        );
        assert!(matches!(s.handle("hello \"there\""), Outcome::Shown(_)));
        assert!(matches!(s.handle(":end"), Outcome::Shown(_)));
        match s.handle("c.history().len()") {
            Outcome::Shown(t) => assert_eq!(t, "=> 2"),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(s.handle(":chat 42"), Outcome::Error(e) if e.contains("needs a chat session"))
        );
    }

    #[test]
    fn commands_help_vars_time_and_unknown() {
        let mut s = Session::new(HostContext::capture());
        s.handle("let answer = 42;");
        assert!(matches!(s.handle(":vars"), Outcome::Shown(t) if t.contains("answer: i64 = 42")));
        assert!(matches!(s.handle(":help"), Outcome::Shown(t) if t.contains("core")));
        assert!(matches!(s.handle(":help version"), Outcome::Shown(t) if t.contains("version()")));
        assert!(matches!(s.handle(":time 1 + 1"), Outcome::Shown(t) if t.contains("took")));
        assert!(matches!(s.handle(":frobnicate"), Outcome::Error(_)));
        assert!(matches!(s.handle(":quit"), Outcome::Quit));
        assert!(matches!(s.handle(":reset"), Outcome::Shown(_)));
        assert!(s.variable_names().is_empty());
    }
}
