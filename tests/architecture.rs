//! The module map in the crate docs, kept true: every module of `src/` may
//! name only the modules its layer may use, so calls go one way (face →
//! engine → OS layer, and everyone → the words), and the journal uses only
//! the public face.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each module and the crate modules it may name (`crate::x`). A module may
/// always name itself, its own submodules (`super::`, `self::`) and the
/// items the crate root exports (`crate::LockMgr`), which are the public
/// face.
const ALLOWED: &[(&str, &[&str])] = &[
    // The words: used by all, using (almost) none.
    ("vocab", &["holder"]),
    ("error", &["holder", "vocab"]),
    ("holder", &[]),
    ("holders", &["holder", "vocab"]),
    ("telemetry", &["vocab"]),
    // The OS layer: knows the words and nothing else.
    ("os", &["vocab"]),
    ("forkable", &["os"]),
    ("watcher", &["forkable", "os"]),
    ("proc_locks", &["os", "vocab"]),
    // The engine: the OS layer and the words, never the face.
    ("clock", &["os"]),
    ("board", &["forkable", "os"]),
    ("queue", &["board", "clock", "forkable", "os", "vocab"]),
    ("kernel_wait", &["forkable", "os", "queue", "vocab"]),
    (
        "slots",
        &[
            "clock",
            "contender",
            "error",
            "os",
            "queue",
            "vocab",
            "wait",
        ],
    ),
    (
        "wait",
        &[
            "clock",
            "error",
            "holder",
            "kernel_wait",
            "os",
            "queue",
            "watcher",
        ],
    ),
    (
        "contender",
        &[
            "clock",
            "error",
            "holder",
            "holders",
            "kernel_wait",
            "os",
            "proc_locks",
            "queue",
            "telemetry",
            "vocab",
            "wait",
        ],
    ),
    // The face: the engine and the words, never the OS layer directly.
    (
        "lock",
        &[
            "contender",
            "error",
            "guard",
            "holder",
            "holders",
            "slots",
            "telemetry",
            "vocab",
            "wait",
        ],
    ),
    ("guard", &["contender", "error", "vocab"]),
    ("leader", &["error", "lock"]),
    ("semaphore", &["error", "lock", "permit", "slots", "wait"]),
    ("permit", &["error", "slots"]),
    // Its sessions belong to one process: the process id (cached, reset in
    // a child) and the process-wide state a fork must not carry over.
    (
        "pg",
        &[
            "error",
            "forkable",
            "holder",
            "os",
            "telemetry",
            "vocab",
            "wait",
        ],
    ),
    // A user of the face: the public items and the face's safe open.
    ("journal", &["error", "lock"]),
];

/// The crate modules a file names, as `crate::x` paths or in a
/// `use crate::{x, y::{z}}` list, at any depth (lower-case names only:
/// capitalised ones are the root's public re-exports). `super::` that
/// reaches the crate root counts as `crate::`: `up` is how many of them
/// do (1 in `src/x.rs` and `src/x/mod.rs`, 2 in `src/x/y.rs`).
fn named_modules(source: &str, up: usize) -> BTreeSet<String> {
    let source = source.replace(&"super::".repeat(up), "crate::");
    let mut found = BTreeSet::new();
    let mut rest = source.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(list) = rest.strip_prefix('{') {
            for item in top_level_items(list) {
                push_module(&mut found, item.trim());
            }
        } else {
            push_module(&mut found, rest);
        }
    }
    found
}

/// The comma-separated items of a `{...}` list whose text starts after the
/// `{`, split only at its own level (`a::{b, c}, d` is two items).
fn top_level_items(list: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in list.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&list[start..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    panic!("use list not closed: {list}");
}

/// `source` without its `#[cfg(test)]` items (a `mod tests { ... }`, a
/// test-only function or `use`): unit tests may reach anywhere, the rest of
/// the file may not.
fn without_test_items(source: &str) -> String {
    const ATTR: &str = "#[cfg(test)]";
    let mut out = String::new();
    let mut rest = source;
    while let Some(at) = rest.find(ATTR) {
        out.push_str(&rest[..at]);
        let item = &rest[at + ATTR.len()..];
        // The item ends at its `;`, or at the brace closing its body.
        let body = item.find('{');
        let end = match (item.find(';'), body) {
            (Some(semi), Some(open)) if semi < open => semi + 1,
            (_, Some(open)) => {
                let mut depth = 0usize;
                let mut end = item.len();
                for (i, c) in item[open..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = open + i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (Some(semi), None) => semi + 1,
            (None, None) => item.len(),
        };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

fn push_module(found: &mut BTreeSet<String>, path: &str) {
    let name: String = path
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if name.starts_with(|c: char| c.is_ascii_lowercase()) {
        found.insert(name);
    }
}

/// Every `.rs` file under `src/`, by the top-level module it belongs to.
fn modules(src: &Path) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            out.entry(top)
                .or_default()
                .push((rel.display().to_string(), text));
        }
    }
    out
}

#[test]
fn calls_go_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut wrong = Vec::new();
    for (module, files) in modules(&src) {
        if module == "lib" {
            continue;
        }
        let Some(may) = allowed.get(module.as_str()) else {
            wrong.push(format!(
                "src/{module}: not in the module map (tests/architecture.rs, crate docs)"
            ));
            continue;
        };
        for (file, text) in files {
            let up = if file.ends_with("mod.rs") || !file.contains('/') {
                1
            } else {
                2
            };
            for named in named_modules(&without_test_items(&text), up) {
                if named != module && !may.contains(&named.as_str()) {
                    wrong.push(format!("src/{file} uses crate::{named}"));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "calls against the module map:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn only_the_os_layer_may_hold_unsafe_code() {
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    assert!(lib.contains("#![deny(unsafe_code)]"));
    let allowances: Vec<_> = lib
        .lines()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0].contains("allow(unsafe_code)"))
        .map(|w| w[1].trim().to_owned())
        .collect();
    assert_eq!(allowances, ["mod os;"]);
}

/// The tests, benches and the command's tests keep their `unsafe` code in
/// one module each (`common/sys.rs`): every crate root denies it, and only
/// those modules allow it.
#[test]
fn tests_keep_unsafe_code_in_their_sys_modules() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut allowed = Vec::new();
    for dir in [
        "tests",
        "tests/common",
        "cli/tests",
        "cli/tests/common",
        "benches",
    ] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            let is_root = !dir.ends_with("common");
            if is_root {
                assert!(
                    text.contains("#![deny(unsafe_code)]"),
                    "{name} does not deny unsafe code"
                );
            }
            let allows = |line: &str| {
                let line = line.trim_start();
                line.starts_with("#![allow(unsafe_code)]")
                    || line.starts_with("#[allow(unsafe_code)]")
            };
            if text.lines().any(allows) {
                allowed.push(name);
            }
        }
    }
    allowed.sort();
    assert_eq!(allowed, ["cli/tests/common/sys.rs", "tests/common/sys.rs"]);
}

#[test]
fn the_checker_sees_uses() {
    let named = named_modules(
        "use crate::error::{LockError, Operation};\nuse crate::{LockKind, os::FileId, queue};\n\
         let x = crate::os::hostname();",
        1,
    );
    assert_eq!(
        named.into_iter().collect::<Vec<_>>(),
        ["error", "os", "queue"]
    );
    // A nested list does not hide the items after it (before: `watcher`
    // was missed); `super::` that reaches the root is `crate::` (before:
    // missed).
    let named = named_modules(
        "use crate::{os::{a, b}, watcher};\nuse super::contender::X;",
        1,
    );
    assert_eq!(
        named.into_iter().collect::<Vec<_>>(),
        ["contender", "os", "watcher"]
    );
    // One level down, `super::` is the module itself; two reach the root.
    let named = named_modules("use super::x; use super::super::queue::Y;", 2);
    assert_eq!(named.into_iter().collect::<Vec<_>>(), ["queue"]);
}

#[test]
fn the_checker_skips_only_test_items() {
    let code = without_test_items(
        "use crate::a;\n#[cfg(test)]\nuse crate::b;\n#[cfg(test)]\nfn t() { if x { crate::c(); } }\n\
         fn real() { crate::d(); }\n#[cfg(test)]\nmod tests { use crate::e; }\nuse crate::f;",
    );
    // Before, everything after the first `#[cfg(test)]` was skipped:
    // `d` and `f` were missed.
    assert_eq!(
        named_modules(&code, 1).into_iter().collect::<Vec<_>>(),
        ["a", "d", "f"]
    );
}

/// The command writes its lines through `say!` and `answer!`, which never
/// panic when stderr or stdout cannot take them: no `println!` or
/// `eprintln!` in its code (one in `list` made `lockmgr list DIR 2>/dev/full`
/// panic).
#[test]
fn the_command_writes_only_through_its_output_module() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("cli/src");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if ["println!(", "eprintln!(", "print!(", "eprint!("]
                .iter()
                .any(|m| code.contains(m))
            {
                found.push(format!("{}:{}", path.display(), n + 1));
            }
        }
    }
    assert!(found.is_empty(), "{found:?}");
}
