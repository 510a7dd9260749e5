//! The import graph between the top-level modules of every crate has no
//! cycle: a reader can learn a crate bottom-up, and a module can be changed
//! knowing what depends on it. (`tuf-repo/check-layers.sh` goes further for
//! the release tool: named layers that import downward only.)
//!
//! An import is a `crate::NAME` path (or a `crate::{A, B}` group) in a
//! module's files, outside `//` comments. Cycles inside one top-level module
//! (a file and its submodules) are that module's own business.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Every library crate of the workspace, by its `src/` folder.
const CRATES: &[&str] = &[
    "agent/src",
    "common/src",
    "server/src",
    "tuf-repo/src",
    "tuf-repo/signing/src",
    "integration-tests/src",
];

type Graph = BTreeMap<String, BTreeSet<String>>;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds integration-tests")
        .to_path_buf()
}

/// The `.rs` files of a top-level module: `NAME.rs` and everything under
/// `NAME/`.
fn files_of(src: &Path, module: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let file = src.join(format!("{module}.rs"));
    if file.is_file() {
        files.push(file);
    }
    let mut dirs = vec![src.join(module)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// The top-level modules of a crate (`lib.rs`, `main.rs` and `bin/` are the
/// roots that declare them, not modules).
fn modules(src: &Path) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for entry in fs::read_dir(src).expect("read src").flatten() {
        let path = entry.path();
        let name = if path.is_dir() {
            path.file_name().map(|n| n.to_string_lossy().into_owned())
        } else if path.extension().is_some_and(|e| e == "rs") {
            path.file_stem().map(|n| n.to_string_lossy().into_owned())
        } else {
            None
        };
        if let Some(name) = name {
            if !matches!(name.as_str(), "lib" | "main" | "bin") {
                names.insert(name);
            }
        }
    }
    names
}

/// The code without `//` comments. A `//` right after a non-blank (as in
/// `"https://..."`) is kept: it is inside a string, not a comment.
fn without_comments(text: &str) -> String {
    let mut code = String::with_capacity(text.len());
    for line in text.lines() {
        let cut = line
            .match_indices("//")
            .find(|(i, _)| *i == 0 || line[..*i].ends_with([' ', '\t']))
            .map_or(line.len(), |(i, _)| i);
        code.push_str(&line[..cut]);
        code.push('\n');
    }
    code
}

fn ident_at(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The first segment of every `crate::` path in the code.
fn imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // `ota_repo_crate::` or the like: not our `crate`
        }
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c, d::{e, f}}`: the names at depth one.
            let mut depth = 1;
            let mut expect_name = true;
            let mut i = 0;
            let bytes = group.as_bytes();
            while i < bytes.len() && depth > 0 {
                match bytes[i] {
                    b'{' => depth += 1,
                    b'}' => depth -= 1,
                    b',' if depth == 1 => expect_name = true,
                    c if depth == 1 && expect_name && (c.is_ascii_alphabetic() || c == b'_') => {
                        let name = ident_at(&group[i..]);
                        found.insert(name.to_owned());
                        expect_name = false;
                        i += name.len();
                        continue;
                    }
                    _ => {}
                }
                i += 1;
            }
        } else {
            let name = ident_at(rest);
            if !name.is_empty() {
                found.insert(name.to_owned());
            }
        }
    }
    found
}

fn graph(src: &Path) -> Graph {
    let names = modules(src);
    names
        .iter()
        .map(|module| {
            let mut deps = BTreeSet::new();
            for file in files_of(src, module) {
                let text = fs::read_to_string(&file).expect("read source file");
                deps.extend(
                    imports(&without_comments(&text))
                        .into_iter()
                        .filter(|d| d != module && names.contains(d)),
                );
            }
            (module.clone(), deps)
        })
        .collect()
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct Walk<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.stack.contains(&w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    let root = workspace();
    let mut problems = Vec::new();
    for krate in CRATES {
        let g = graph(&root.join(krate));
        assert!(!g.is_empty(), "{krate}: no modules found");
        for cycle in cycles(&g) {
            let edges: Vec<String> = cycle
                .iter()
                .map(|m| {
                    let inside: Vec<&str> = g[m]
                        .iter()
                        .filter(|d| cycle.contains(d))
                        .map(String::as_str)
                        .collect();
                    format!("{m} -> {}", inside.join(", "))
                })
                .collect();
            problems.push(format!("{krate}: {}", edges.join("; ")));
        }
    }
    assert!(
        problems.is_empty(),
        "import cycles between top-level modules:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checker_sees_paths_groups_and_cycles() {
    let code = without_comments(
        "use crate::a::X;\nuse crate::{b, c::{D, E}};\n// crate::hidden\nlet u = \"https://x\"; crate::f();\nmy_crate::g();\n",
    );
    let found = imports(&code);
    let want: BTreeSet<String> = ["a", "b", "c", "f"].iter().map(|s| s.to_string()).collect();
    assert_eq!(found, want);

    let mut g = Graph::new();
    g.insert("x".into(), ["y".to_string()].into());
    g.insert("y".into(), ["z".to_string()].into());
    g.insert("z".into(), ["x".to_string()].into());
    g.insert("w".into(), ["x".to_string()].into());
    assert_eq!(
        cycles(&g),
        vec![vec!["x".to_string(), "y".into(), "z".into()]]
    );
}
