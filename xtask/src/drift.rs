//! Checks that keep the docs and the packages true to the code, run by `cargo test` (and so
//! by `cargo xtask ci`):
//! - every file, type, function and field that `docs/ARCHITECTURE.md` names in backticks
//!   exists, so a rename or a removal that forgets the map fails;
//! - every file a crate embeds (`include_str!`, `include_bytes!`) lies inside that crate's
//!   package, so the published crate builds on its own.

use std::path::{Path, PathBuf};

/// File kinds whose names the map cites.
const EXTENSIONS: [&str; 10] = [
    ".rs", ".md", ".js", ".mjs", ".json", ".toml", ".css", ".html", ".py", ".yml",
];

/// Names the map may cite that no source of ours spells: HTTP headers, and a type inside a
/// dependency.
const NOT_OURS: [&str; 4] = ["ETag", "Upgrade", "Expect", "DashMap"];

/// Directories never searched: build output, dependencies, history.
const SKIPPED: [&str; 3] = ["target", "node_modules", ".git"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_owned()
}

/// Every file under `dir`, skipping [`SKIPPED`].
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if !SKIPPED.iter().any(|s| name == *s) {
                files(&path, out);
            }
        } else {
            out.push(path);
        }
    }
}

/// The text between single backticks, outside fenced code blocks.
fn spans(doc: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut parts = line.split('`');
        parts.next();
        while let (Some(inside), Some(_)) = (parts.next(), parts.next()) {
            out.push(inside);
        }
    }
    out
}

/// Whether `word` occurs in `text` with no identifier character on either side.
fn has_word(text: &str, word: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

fn is_camel(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.chars().all(|c| c.is_ascii_alphanumeric())
        && s.chars().any(|c| c.is_ascii_lowercase())
}

fn is_snake(s: &str) -> bool {
    !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// What a span names, if it names something that must exist: a file, or a code identifier.
enum Cited<'a> {
    File(&'a str),
    Word(&'a str),
}

fn cited(span: &str) -> Option<Cited<'_>> {
    let plain = |s: &str| {
        !s.contains([' ', '<', '>', '*', '{', '}', '(', '=', ','])
            && !s.starts_with(['/', '.', '-'])
    };
    if EXTENSIONS.iter().any(|e| span.ends_with(e)) && plain(span) {
        return Some(Cited::File(span));
    }
    let code = span.strip_suffix("()").unwrap_or(span);
    if let Some((ty, member)) = code.split_once("::") {
        return (is_camel(ty) && is_snake(member)).then_some(Cited::Word(member));
    }
    (is_camel(code) || (span.ends_with("()") && is_snake(code))).then_some(Cited::Word(code))
}

#[test]
fn everything_the_architecture_map_names_exists() {
    let root = root();
    let doc = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let mut all = Vec::new();
    files(&root, &mut all);
    let sources: String = all
        .iter()
        .filter(|p| {
            let p = p.to_string_lossy();
            // This file spells removed names in its own test.
            [".rs", ".js", ".mjs"].iter().any(|e| p.ends_with(e)) && !p.ends_with("/drift.rs")
        })
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect::<Vec<_>>()
        .join("\n");
    let relative: Vec<String> = all
        .iter()
        .filter_map(|p| p.strip_prefix(&root).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let mut missing = Vec::new();
    let mut checked = 0;
    for span in spans(&doc) {
        let found = match cited(span) {
            None => continue,
            Some(Cited::File(f)) => relative.iter().any(|p| {
                p == f
                    || p.ends_with(&format!("/{f}"))
                    || (!f.contains('/') && p.rsplit('/').next() == Some(f))
            }),
            Some(Cited::Word(w)) => NOT_OURS.contains(&w) || has_word(&sources, w),
        };
        checked += 1;
        if !found {
            missing.push(span);
        }
    }
    assert!(
        checked > 300,
        "only {checked} names checked: the scan no longer reads the map"
    );
    assert!(
        missing.is_empty(),
        "docs/ARCHITECTURE.md names what the code does not have (renamed or removed?): \
         {missing:?}"
    );
}

#[test]
fn the_check_sees_a_removed_name() {
    assert!(matches!(
        cited("ConsumerPool::dispatch_ephemeral"),
        Some(Cited::Word("dispatch_ephemeral"))
    ));
    assert!(matches!(
        cited("im-sse/src/broker.rs"),
        Some(Cited::File(_))
    ));
    assert!(matches!(cited("SseBroker"), Some(Cited::Word("SseBroker"))));
    assert!(matches!(cited("resolve()"), Some(Cited::Word("resolve"))));
    assert!(cited("/app.js").is_none() && cited("GET /events").is_none());
    assert!(has_word("fn close_user(", "close_user") && !has_word("close_users", "close_user"));
    assert_eq!(spans("a `b` c\n```\n`e`\n```\n`f`"), ["b", "f"]);
}

#[test]
fn crates_embed_only_files_of_their_own_package() {
    let root = root();
    let mut escaping = Vec::new();
    let crates = std::fs::read_dir(root.join("crates")).unwrap();
    for krate in crates.flatten().map(|e| e.path()) {
        let mut sources = Vec::new();
        files(&krate.join("src"), &mut sources);
        for file in sources
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        {
            let text = std::fs::read_to_string(file).unwrap();
            for macro_name in ["include_str!(\"", "include_bytes!(\""] {
                for (at, _) in text.match_indices(macro_name) {
                    let rest = &text[at + macro_name.len()..];
                    let Some(end) = rest.find('"') else { continue };
                    let target = file.parent().unwrap().join(&rest[..end]);
                    let inside = target
                        .canonicalize()
                        .is_ok_and(|t| t.starts_with(krate.canonicalize().unwrap()));
                    if !inside {
                        escaping.push(format!("{} -> {}", file.display(), &rest[..end]));
                    }
                }
            }
        }
    }
    assert!(
        escaping.is_empty(),
        "files embedded from outside their crate's package: {escaping:?}"
    );
}
