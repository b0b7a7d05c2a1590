//! The documentation and `:help` must not disagree: every function a script can call (the
//! catalogue behind `:help`, native and stdlib alike) is described in some `docs/*.md` page,
//! every page is reachable from the README, and no relative link in the README or the pages
//! points at a file or heading that is not there.
//!
//! A function counts as documented when a page names it the way prose or an example does:
//! `` `name` ``, or `name(` not preceded by a letter, digit or `_` (so `.name(` and
//! `fmt::name(` count, but `load_dataset(` does not document `dataset`). Each test reports every
//! problem it finds in one failure, so one run shows all there is to fix.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use tunelab::script::help::catalog;

/// Machine-specific prefixes that must never appear in the docs: paths are written relative to
/// the repository or to `$HOME` (`~/.cache/...`).
const MACHINE_PATHS: [&str; 4] = ["/work/", "/root/", "/home/", "/Users/"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `docs/*.md` page, sorted, with its text.
fn doc_pages() -> Vec<(PathBuf, String)> {
    let dir = repo().join("docs");
    let mut pages: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (the reference pages live in docs/)", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.sort();
    pages
        .into_iter()
        .map(|p| {
            let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, text)
        })
        .collect()
}

/// The README and every docs page: the files whose links must resolve.
fn all_markdown() -> Vec<(PathBuf, String)> {
    let readme = repo().join("README.md");
    let text = fs::read_to_string(&readme).expect("README.md");
    let mut files = vec![(readme, text)];
    files.extend(doc_pages());
    files
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether `text` mentions the function `name` as a call (`name(`, `.name(`, `m::name(`) or in
/// code quotes (`` `name` ``).
fn mentions(text: &str, name: &str) -> bool {
    if text.contains(&format!("`{name}`")) {
        return true;
    }
    let call = format!("{name}(");
    text.match_indices(&call)
        .any(|(at, _)| !text[..at].chars().next_back().is_some_and(is_ident))
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn every_script_function_is_documented_in_docs() {
    let pages = doc_pages();
    assert!(!pages.is_empty(), "docs/ has no .md pages");
    // name → the areas it appears under (an overloaded name is one entry).
    let mut functions: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in catalog() {
        functions.entry(f.name).or_default().insert(f.area);
    }
    assert!(
        functions.len() > 20,
        "the :help catalogue has only {} names",
        functions.len()
    );
    let missing: Vec<String> = functions
        .iter()
        .filter(|(name, _)| !pages.iter().any(|(_, text)| mentions(text, name)))
        .map(|(name, areas)| {
            let areas: Vec<&str> = areas.iter().map(String::as_str).collect();
            format!("  {name}  [{}]", areas.join(", "))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} script functions are in :help but in no docs/*.md page \
         (mention each as `name` or name( with a one-line description; `tunelab` then \
         `:help NAME` prints its documentation):\n{}",
        missing.len(),
        functions.len(),
        missing.join("\n")
    );
}

/// Markdown link targets in `text`: the `(...)` after `]`, and reference definitions `[x]: target`.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].split_whitespace().next().unwrap_or("");
            targets.push(target.to_string());
            rest = &after[end..];
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            if let Some(at) = trimmed.find("]: ") {
                targets.push(trimmed[at + 3..].trim().to_string());
            }
        }
    }
    targets
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces become hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|&c| is_ident(c) || c == '-' || c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a markdown file's headings (outside code fences), with GitHub's `-1`, `-2`
/// suffixes for repeated headings.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence || !line.starts_with('#') {
            continue;
        }
        let heading = line.trim_start_matches('#');
        if !heading.starts_with(' ') {
            continue;
        }
        let base = slug(heading);
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

#[test]
fn relative_links_in_readme_and_docs_resolve() {
    let files = all_markdown();
    let mut broken = Vec::new();
    for (path, text) in &files {
        let dir = path.parent().unwrap();
        for target in link_targets(text) {
            if target.contains("://") || target.starts_with("mailto:") || target.is_empty() {
                continue;
            }
            let (file, fragment) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target.as_str(), None),
            };
            let resolved = if file.is_empty() {
                path.clone()
            } else {
                dir.join(file)
            };
            if !resolved.exists() {
                broken.push(format!("  {}: ({target}): no such file", relative(path)));
                continue;
            }
            let Some(fragment) = fragment else { continue };
            if resolved.extension().is_some_and(|x| x == "md") {
                let linked = fs::read_to_string(&resolved).unwrap_or_default();
                if !anchors(&linked).contains(fragment) {
                    broken.push(format!(
                        "  {}: ({target}): no heading with anchor #{fragment} in {}",
                        relative(path),
                        relative(&resolved)
                    ));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "{} broken relative link(s):\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn every_docs_page_is_linked_from_the_readme() {
    let readme = fs::read_to_string(repo().join("README.md")).expect("README.md");
    let linked: BTreeSet<PathBuf> = link_targets(&readme)
        .iter()
        .map(|t| t.split('#').next().unwrap_or(""))
        .filter(|t| !t.is_empty() && !t.contains("://"))
        .map(|t| repo().join(t))
        .collect();
    let unlinked: Vec<String> = doc_pages()
        .iter()
        .filter(|(p, _)| !linked.contains(p))
        .map(|(p, _)| format!("  {}", relative(p)))
        .collect();
    assert!(
        unlinked.is_empty(),
        "docs pages the README does not link to:\n{}",
        unlinked.join("\n")
    );
}

/// Every note and script a user may follow outside the docs: scripts/, the peer checks, the
/// fixture generators and their notes, CI, and the sources.
fn notes_and_scripts() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| {
                ["md", "py", "sh", "rhai", "rs"].contains(&e.to_str().unwrap_or(""))
            }) {
                if let Ok(text) = fs::read_to_string(&path) {
                    out.push((path, text));
                }
            }
        }
    }
    let mut files = Vec::new();
    for dir in [
        "scripts",
        "stdlib",
        "tests/peers",
        "tests/fixtures",
        "src",
        ".ci",
    ] {
        walk(&repo().join(dir), &mut files);
    }
    if let Ok(text) = fs::read_to_string(repo().join(".ci/run")) {
        files.push((repo().join(".ci/run"), text));
    }
    files
}

#[test]
fn docs_name_no_machine_specific_paths() {
    let mut found = Vec::new();
    for (path, text) in all_markdown().into_iter().chain(notes_and_scripts()) {
        for (i, line) in text.lines().enumerate() {
            if let Some(prefix) = MACHINE_PATHS.iter().find(|p| line.contains(*p)) {
                found.push(format!(
                    "  {}:{}: {prefix}… ({})",
                    relative(&path),
                    i + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "paths of one machine (write them relative to the repository, or to $HOME or \
         $XDG_CACHE_HOME):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_matching_rule_accepts_mentions_and_rejects_lookalikes() {
    assert!(mentions("call `dataset` first", "dataset"));
    assert!(mentions("let d = dataset(\"x\")", "dataset"));
    assert!(mentions("ds.take(3)", "take"));
    assert!(mentions("fmt::bytes(n)", "bytes"));
    assert!(!mentions("load_dataset(\"json\")", "dataset"));
    assert!(!mentions("the dataset folder", "dataset"));
    assert!(!mentions("`datasets`", "dataset"));
    assert_eq!(slug("Models and chat"), "models-and-chat");
    assert_eq!(slug("GPU (CUDA)"), "gpu-cuda");
    assert_eq!(slug("Fine-tuning (LoRA SFT)"), "fine-tuning-lora-sft");
}
