//! The agent's stages import one way: each folder of `src/` may use only the folders listed
//! before it in `STAGES` (the order of `lib.rs` and README's layout table). This reads every
//! source file and fails on an import that runs back up the stack.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

/// Bottom to top.
const STAGES: &[&str] = &[
    "base", "kernel", "flow", "decode", "record", "sink", "ops", "k8s", "config", "ondemand",
    "assembly", "drivers",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("listing src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without `//` comments (doc comments mention paths that are not imports).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident(s: &str) -> String {
    s.trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The top-level modules a file names through `crate::` (paths and `use crate::{a, b::c}`).
fn crate_uses(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut item) = (0usize, String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
            out.insert(ident(&item));
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

#[test]
fn stages_import_only_the_stages_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut seen_stages: BTreeSet<String> = BTreeSet::new();
    let mut back_up = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src");
        let top = rel.iter().next().and_then(|c| c.to_str()).expect("name");
        let stage = top.trim_end_matches(".rs");
        let Some(level) = STAGES.iter().position(|s| *s == stage) else {
            // lib.rs and main.rs sit above every stage.
            assert!(
                matches!(stage, "lib" | "main"),
                "{} is in no stage: add its folder to STAGES, lib.rs and README's layout",
                rel.display()
            );
            continue;
        };
        seen_stages.insert(stage.to_owned());
        let text = std::fs::read_to_string(&file).expect("reading a source file");
        for used in crate_uses(&code(&text)) {
            let Some(used_level) = STAGES.iter().position(|s| *s == used) else {
                panic!("{} uses crate::{used}, which is no stage", rel.display());
            };
            if used_level > level {
                back_up.push(format!("{} ({stage}) uses {used}", rel.display()));
            }
        }
    }
    assert!(
        back_up.is_empty(),
        "imports back up the stack:\n{}",
        back_up.join("\n")
    );
    assert_eq!(seen_stages.len(), STAGES.len(), "a stage has no files");
}

#[test]
fn the_import_scanner_sees_grouped_and_plain_paths() {
    let uses = crate_uses(&code(
        "use crate::{\n    base::{time::Clock, net},\n    flow::Status, // crate::drivers\n};\nlet x = crate::kernel::sys::lookup();",
    ));
    assert_eq!(
        uses.into_iter().collect::<Vec<_>>(),
        ["base", "flow", "kernel"]
    );
}
