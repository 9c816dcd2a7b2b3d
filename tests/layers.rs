//! The layout's rules, checked on the source: the pure layers import no runtime crate, and each
//! folder of `src/` uses only the folders below it (README, "Layout"). Unit tests inside a file
//! (after its `#[cfg(test)]` module) may reach further and are not checked.

use std::path::{Path, PathBuf};

/// The folders, lowest first: each may use itself and those before it.
const LAYERS: [&str; 8] = ["wire", "config", "forecast", "core", "history", "kafka", "api", "apps"];

/// Crates the functional core, the forecast model and the wire contract never import.
const RUNTIME_CRATES: [&str; 7] = ["tokio", "rdkafka", "datafusion", "axum", "arrow", "parquet", "futures_util"];

const PURE: [&str; 3] = ["core", "forecast", "wire"];

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The file's code outside its unit tests and comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// Whether `code` names `name` as a path's first segment (`name::`, `::name::`).
fn names_crate(code: &str, name: &str) -> bool {
    let needle = format!("{name}::");
    code.match_indices(&needle).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        before.is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
            && !code[..i].ends_with("crate::")
            && !code[..i].ends_with("self::")
            && !code[..i].ends_with("super::")
    })
}

#[test]
fn src_is_laid_out_in_the_layers_folders() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for layer in LAYERS {
        assert!(src.join(layer).join("mod.rs").is_file(), "src/{layer}/mod.rs missing");
    }
    let loose: Vec<String> = std::fs::read_dir(&src)
        .expect("src")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".rs") && n != "lib.rs" && n != "main.rs")
        .collect();
    assert!(loose.is_empty(), "files outside the layers' folders: {loose:?}");
}

#[test]
fn the_pure_layers_import_no_runtime_crate() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for layer in PURE {
        for file in sources(&src.join(layer)) {
            let code = code(&file);
            for name in RUNTIME_CRATES {
                if names_crate(&code, name) {
                    found.push(format!("{} uses {name}", file.display()));
                }
            }
            for clock in ["SystemTime::now", "Instant::now"] {
                if code.contains(clock) {
                    found.push(format!("{} reads the clock ({clock})", file.display()));
                }
            }
        }
    }
    assert!(found.is_empty(), "the pure layers must stay pure:\n{}", found.join("\n"));
}

#[test]
fn each_layer_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for (rank, layer) in LAYERS.iter().enumerate() {
        for file in sources(&src.join(layer)) {
            let code = code(&file);
            for above in &LAYERS[rank + 1..] {
                if code.contains(&format!("crate::{above}::")) {
                    found.push(format!("{} ({layer}) uses crate::{above}", file.display()));
                }
            }
        }
    }
    assert!(found.is_empty(), "a layer reaches up:\n{}", found.join("\n"));
}

#[test]
fn the_checks_see_what_they_look_for() {
    assert!(names_crate("use tokio::sync::mpsc;", "tokio"));
    assert!(names_crate("x = ::rdkafka::ClientConfig::new()", "rdkafka"));
    assert!(!names_crate("use crate::core::tokio_free::X;", "tokio"));
    assert!(!names_crate("my_tokio::x", "tokio"));
}
