//! The README and the manual in `docs/` stay true to the tree: every relative link resolves to
//! a file, and every `confide …` command quoted in code (blocks and inline spans) names
//! subcommands that exist (`confide <subcommands> --help` succeeds). Commands that do not exist
//! yet must not be quoted as commands.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::root;

fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The targets of markdown links `[text](target)` in `text`.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].to_string());
        }
    }
    out
}

/// The code in `text`: every line of fenced blocks and every inline span.
fn code(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            // Shell comments are prose.
            let cut = line
                .char_indices()
                .find(|&(i, c)| c == '#' && (i == 0 || line[..i].ends_with(char::is_whitespace)))
                .map_or(line.len(), |(i, _)| i);
            out.push(line[..cut].to_string());
        } else {
            out.extend(line.split('`').skip(1).step_by(2).map(str::to_string));
        }
    }
    out
}

/// The subcommand chains of every `confide …` in `code`: the words after `confide` up to the
/// first that is not a plain lowercase word (a flag, a path, a placeholder).
fn commands(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let words: Vec<&str> = code.split_whitespace().collect();
    for (i, w) in words.iter().enumerate() {
        if *w != "confide" {
            continue;
        }
        let chain: Vec<String> = words[i + 1..]
            .iter()
            .take_while(|w| {
                **w != "confide"
                    && w.starts_with(|c: char| c.is_ascii_lowercase())
                    && w.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
            .map(|w| w.to_string())
            .collect();
        if !chain.is_empty() {
            out.push(chain);
        }
    }
    out
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).expect("read");
        let dir = page.parent().unwrap_or(Path::new("."));
        for target in links(&text) {
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let file = target.split('#').next().unwrap_or_default();
            assert!(
                dir.join(file).exists(),
                "{}: the link `{target}` points nowhere",
                page.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 12, "only {checked} links checked");
}

#[test]
fn every_quoted_confide_command_exists() {
    let mut chains = BTreeSet::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).expect("read");
        for c in code(&text) {
            for chain in commands(&c) {
                chains.insert((chain, page.clone()));
            }
        }
    }
    let mut checked = BTreeSet::new();
    for (chain, page) in &chains {
        if !checked.insert(chain.clone()) {
            continue;
        }
        let mut args: Vec<&str> = chain.iter().map(String::as_str).collect();
        args.push("--help");
        let out = common::confide(&args);
        assert!(
            out.status.success(),
            "{}: `confide {}` is not a command: {}",
            page.display(),
            chain.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The README and docs quote dozens of distinct commands; a parser that found few is broken.
    assert!(checked.len() >= 30, "only {} commands found", checked.len());
}

#[test]
fn the_extractors_find_what_they_should() {
    assert_eq!(
        links("see [a](docs/a.md#x) and [b](http://b)"),
        ["docs/a.md#x", "http://b"]
    );
    assert_eq!(
        code("text `confide job list` more\n```sh\nconfide ca init --dir x # confide or\n```\n"),
        ["confide job list", "confide ca init --dir x "]
    );
    assert_eq!(
        commands("confide ca init --dir fed && confide job status my-job <x> | confide …"),
        [vec!["ca", "init"], vec!["job", "status", "my-job"]]
    );
}
