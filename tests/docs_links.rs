//! The README and `docs/` hold together: every relative link names a file that exists, every
//! anchor a heading of its file (GitHub's slugs), and the README stays a five-minute read.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// README.md and every `docs/*.md`.
fn documents() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> =
        std::fs::read_dir(root().join("docs")).expect("docs/").map(|e| e.expect("entry").path()).filter(|p| p.extension().is_some_and(|e| e == "md")).collect();
    docs.sort();
    assert!(!docs.is_empty(), "docs/ holds no .md file");
    docs.insert(0, root().join("README.md"));
    docs
}

/// The lines outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|line| {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// GitHub's anchor for a heading: lowercase, spaces to '-', punctuation other than '-' and '_' dropped.
fn slug(heading: &str) -> String {
    let lower = heading.trim().to_lowercase();
    lower.chars().filter_map(|c| if c == ' ' { Some('-') } else { (c.is_alphanumeric() || c == '-' || c == '_').then_some(c) }).collect()
}

/// The anchors of a document's headings; a repeated heading gets `-1`, `-2`, … as on GitHub.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    for line in prose(text) {
        let level = line.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&level) && line[level..].starts_with(' ') {
            let base = slug(&line[level..]);
            let (mut anchor, mut n) = (base.clone(), 0);
            while seen.contains(&anchor) {
                n += 1;
                anchor = format!("{base}-{n}");
            }
            seen.insert(anchor);
        }
    }
    seen
}

/// The targets of `[text](target)` links outside code blocks and code spans.
fn links(text: &str) -> Vec<String> {
    let joined = prose(text).join("\n");
    let outside_code: String = joined.split('`').step_by(2).collect::<Vec<_>>().join("");
    let mut found = Vec::new();
    let mut rest = outside_code.as_str();
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        let end = after.find(')').unwrap_or(after.len());
        found.push(after[..end].split_whitespace().next().unwrap_or("").trim_matches(['<', '>']).to_string());
        rest = &after[end..];
    }
    found
}

/// Every link of `text` (the content of `file`) that does not resolve, with the reason.
fn broken(file: &Path, text: &str) -> Vec<String> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let own = anchors(text);
    let mut found = Vec::new();
    for target in links(text) {
        if ["http:", "https:", "mailto:"].iter().any(|scheme| target.starts_with(scheme)) {
            continue;
        }
        let (path, anchor) = match target.split_once('#') {
            Some((path, anchor)) => (path, Some(anchor)),
            None => (target.as_str(), None),
        };
        let problem = if path.is_empty() {
            anchor.is_none_or(|a| !own.contains(a)).then_some("no such heading in this file")
        } else if !dir.join(path).exists() {
            Some("no such file")
        } else if let Some(a) = anchor.filter(|_| path.ends_with(".md")) {
            (!anchors(&read(&dir.join(path))).contains(a)).then_some("no such heading in that file")
        } else {
            None
        };
        if let Some(problem) = problem {
            found.push(format!("{}: ({target}): {problem}", file.display()));
        }
    }
    found
}

#[test]
fn every_relative_link_in_the_readme_and_docs_resolves() {
    let (mut found, mut checked) = (Vec::new(), 0);
    for file in documents() {
        let text = read(&file);
        checked += links(&text).len();
        found.extend(broken(&file, &text));
    }
    assert!(checked > 0, "no links found at all: the link extraction is broken");
    assert!(found.is_empty(), "{} broken link(s) of {checked}:\n{}", found.len(), found.join("\n"));
}

#[test]
fn the_readme_stays_short() {
    let lines = read(&root().join("README.md")).lines().count();
    assert!(lines <= 300, "README.md has {lines} lines, more than 300: move the detail into docs/");
}

#[test]
fn the_checks_see_what_they_look_for() {
    assert_eq!(slug("Kafka runtime (issue 3)"), "kafka-runtime-issue-3");
    assert_eq!(slug(" `surgeguard run` & more_x"), "surgeguard-run--more_x");
    let text = "# Top\n## Top\n[a](#top) [b](#top-1) [c](#nope) `[d](nope.md)` [e](no/such/file.md)\n[f](https://x) [g](README.md#top)\n```\n[h](fenced.md)\n# Fenced\n```\n";
    let found = broken(&root().join("README.md"), text);
    assert_eq!(found.len(), 3, "expected #nope, no/such/file.md and README.md#top: {found:?}");
    assert!(!anchors(text).contains("fenced"));
}
