//! `cargo xtask cycles`: import cycles between the modules of each crate.
//!
//! Module A depends on module B when A's code names an item of B by path
//! (`use crate::b::X`, `crate::b::f()`, `super::X`, `self::b::Y`);
//! re-exports are read like any other `use`. The check is by level: the
//! children of each module, each taken with everything under it, must
//! depend on each other without a cycle (`agent` and all of `cli/*` are two
//! such siblings of the crate root; `event/decode.rs` and
//! `event/decode_security.rs` two of `event`). A module naming its own
//! ancestor's or descendant's items is ownership, not a dependency: a
//! `mod.rs` and its children are one unit. A cycle means neither module can be read,
//! tested or changed without the other: the check fails on any, and prints
//! each once, as the chain of files.
//!
//! The parser is deliberately small: it strips comments, strings and
//! character literals, then reads `crate::`, `super::` and `self::` paths,
//! expanding `{...}` groups. That is exact for this code base, which uses
//! no macros that build paths.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use crate::prepare::{self, step};

/// The crates checked, by source directory.
const CRATES: &[&str] = &[
    "monitor/src",
    "monitor-common/src",
    "monitor-ebpf/src",
    "xtask/src",
];

pub fn run() -> anyhow::Result<()> {
    let mut found = Vec::new();
    for dir in CRATES {
        let root = prepare::root().join(dir);
        let graph = Graph::of_crate(&root).with_context(|| format!("cannot read {dir}"))?;
        let cycles = graph.cycles();
        step(
            if cycles.is_empty() { "ok" } else { "FAIL" },
            &format!("import cycles in {dir}"),
            &format!(
                "{} dependencies between sibling modules, {} cycles",
                graph.edges.values().map(BTreeSet::len).sum::<usize>(),
                cycles.len()
            ),
        );
        for cycle in cycles {
            let chain: Vec<String> = cycle.iter().map(|m| graph.file_of(m)).collect();
            println!("  {}", chain.join(" -> "));
            found.push(cycle);
        }
    }
    if !found.is_empty() {
        bail!(
            "{} import cycles between modules (listed above)",
            found.len()
        );
    }
    Ok(())
}

/// Module path (`["kernel", "btf"]`; the crate root is `[]`).
type Module = Vec<String>;

struct Graph {
    /// Sibling modules (children of one parent, each with its subtree) and
    /// the siblings they depend on.
    edges: BTreeMap<Module, BTreeSet<Module>>,
    /// Source file of each module, relative to the crate's `src`.
    files: BTreeMap<Module, PathBuf>,
}

impl Graph {
    fn of_crate(src: &Path) -> anyhow::Result<Self> {
        let mut files = BTreeMap::new();
        collect(src, src, &mut files)?;
        let modules: BTreeSet<Module> = files.keys().cloned().collect();
        let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
        for (module, file) in &files {
            let text = std::fs::read_to_string(src.join(file))?;
            for path in paths(&strip(&text)) {
                let Some(target) = resolve(module, &path, &modules) else {
                    continue;
                };
                // A module naming its ancestor's or descendant's items is
                // ownership; between two subtrees, the edge joins the two
                // children of their common ancestor that hold them.
                let common = module
                    .iter()
                    .zip(&target)
                    .take_while(|(a, b)| a == b)
                    .count();
                if common == module.len() || common == target.len() {
                    continue;
                }
                edges
                    .entry(module[..=common].to_vec())
                    .or_default()
                    .insert(target[..=common].to_vec());
            }
        }
        Ok(Self { edges, files })
    }

    /// How a module reads in a report: its file, or `dir/*` for a module
    /// with children (the edge may come from any of them).
    fn file_of(&self, module: &Module) -> String {
        let has_children = self
            .files
            .keys()
            .any(|m| m.len() > module.len() && m.starts_with(module));
        if has_children {
            format!("{}/*", module.join("/"))
        } else {
            self.files
                .get(module)
                .map_or_else(|| module.join("::"), |f| f.display().to_string())
        }
    }

    /// Every elementary cycle, each once, from its smallest module.
    fn cycles(&self) -> Vec<Vec<Module>> {
        let mut cycles: BTreeSet<Vec<Module>> = BTreeSet::new();
        for start in self.edges.keys() {
            // Depth-first search for paths back to `start` through modules
            // greater than it, so each cycle is found from its least member.
            let mut stack = vec![(start.clone(), vec![start.clone()])];
            while let Some((at, path)) = stack.pop() {
                for next in self.edges.get(&at).into_iter().flatten() {
                    if next == start {
                        cycles.insert(path.clone());
                    } else if next > start && !path.contains(next) && path.len() < 12 {
                        let mut longer = path.clone();
                        longer.push(next.clone());
                        stack.push((next.clone(), longer));
                    }
                }
            }
        }
        // Report each strongly connected tangle by its shortest cycles only.
        let mut seen_pairs: BTreeSet<(Module, Module)> = BTreeSet::new();
        let mut by_length: Vec<Vec<Module>> = cycles.into_iter().collect();
        by_length.sort_by_key(Vec::len);
        by_length
            .into_iter()
            .filter(|cycle| {
                let pairs: Vec<(Module, Module)> = cycle
                    .iter()
                    .zip(cycle.iter().cycle().skip(1))
                    .map(|(a, b)| (a.clone(), b.clone()))
                    .collect();
                let new = pairs.iter().any(|p| !seen_pairs.contains(p));
                seen_pairs.extend(pairs);
                new
            })
            .collect()
    }
}

fn collect(src: &Path, dir: &Path, files: &mut BTreeMap<Module, PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(src, &path, files)?;
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = path.strip_prefix(src)?.to_owned();
        let mut module: Module = rel
            .with_extension("")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if matches!(
            module.last().map(String::as_str),
            Some("mod" | "lib" | "main")
        ) {
            module.pop();
        }
        if module.first().is_some_and(|m| m == "bin") {
            continue; // separate crates
        }
        files.insert(module, rel);
    }
    Ok(())
}

/// `text` without comments, string and char literals (their contents could
/// look like paths).
fn strip(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'r' if matches!(b.get(i + 1), Some(b'"' | b'#'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                // Raw string: r"..." or r#"..."#.
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                j += 1;
                loop {
                    if j >= b.len() {
                        break;
                    }
                    if b[j] == b'"'
                        && b[j + 1..]
                            .iter()
                            .take(hashes)
                            .filter(|&&c| c == b'#')
                            .count()
                            == hashes
                    {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                out.push_str("\"\"");
                i = j;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                out.push_str("\"\"");
            }
            b'\'' => {
                // A char literal ('a', '\n', '\u{..}') or a lifetime ('a).
                let end = if b.get(i + 1) == Some(&b'\\') {
                    b[i + 2..]
                        .iter()
                        .position(|&c| c == b'\'')
                        .map(|p| i + 2 + p)
                } else if b.get(i + 2) == Some(&b'\'') {
                    Some(i + 2)
                } else {
                    None
                };
                match end {
                    Some(end) => {
                        out.push_str("' '");
                        i = end + 1;
                    }
                    None => {
                        out.push('\'');
                        i += 1;
                    }
                }
            }
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    out
}

/// Every `crate::`/`super::`/`self::` path in `text`, `{}` groups expanded,
/// as segments (the first is `crate`, `super` or `self`).
fn paths(text: &str) -> Vec<Vec<String>> {
    let tokens = tokenize(text);
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i].as_str();
        let preceded_by_path = i > 0 && tokens[i - 1] == "::";
        if matches!(t, "crate" | "super" | "self")
            && !preceded_by_path
            && tokens.get(i + 1).map(String::as_str) == Some("::")
        {
            let (found, next) = path_at(&tokens, i, Vec::new());
            out.extend(found);
            i = next;
        } else {
            i += 1;
        }
    }
    out
}

/// Reads a path starting at `tokens[i]` with `prefix` before it; returns the
/// expanded paths and the index after it.
fn path_at(tokens: &[String], mut i: usize, mut prefix: Vec<String>) -> (Vec<Vec<String>>, usize) {
    loop {
        let Some(t) = tokens.get(i) else {
            return (vec![prefix], i);
        };
        if t == "{" {
            // A group: a comma-separated list of paths, each after `prefix`.
            let mut out = Vec::new();
            i += 1;
            loop {
                match tokens.get(i).map(String::as_str) {
                    None => return (out, i),
                    Some("}") => return (out, i + 1),
                    Some(",") => i += 1,
                    Some(_) => {
                        let (found, next) = path_at(tokens, i, prefix.clone());
                        out.extend(found);
                        // Skip `as name` and anything up to the next , or }.
                        i = next;
                        while let Some(t) = tokens.get(i) {
                            if t == "," || t == "}" {
                                break;
                            }
                            i += 1;
                        }
                    }
                }
            }
        }
        if !is_ident(t) && t != "*" {
            return (vec![prefix], i);
        }
        prefix.push(t.clone());
        i += 1;
        if tokens.get(i).map(String::as_str) != Some("::") {
            return (vec![prefix], i);
        }
        i += 1;
    }
}

fn is_ident(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
        && t.chars().all(|c| c.is_alphanumeric() || c == '_')
}

fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            tokens.push("::".into());
            i += 2;
        } else if c.is_whitespace() {
            i += 1;
        } else {
            tokens.push(c.to_string());
            i += 1;
        }
    }
    tokens
}

/// The module a path in `from` refers to: the longest known module prefix
/// of its absolute form.
fn resolve(from: &Module, path: &[String], modules: &BTreeSet<Module>) -> Option<Module> {
    let mut absolute: Module = Vec::new();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => rest = &rest[1..],
        Some("self") => {
            absolute = from.clone();
            rest = &rest[1..];
        }
        Some("super") => {
            absolute = from.clone();
            while rest.first().map(String::as_str) == Some("super") {
                absolute.pop()?;
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    absolute.extend(rest.iter().cloned());
    (0..=absolute.len())
        .rev()
        .map(|n| absolute[..n].to_vec())
        .find(|m| modules.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The graph of a crate made of `files`, in a directory of its own
    /// (`name`: tests run in parallel in one process).
    fn graph_of(name: &str, files: &[(&str, &str)]) -> Graph {
        let dir = std::env::temp_dir().join(format!("xtask-cycles-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let graph = Graph::of_crate(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        graph
    }

    #[test]
    fn finds_a_cycle_through_a_use_group_and_a_super_path() {
        let graph = graph_of(
            "cycle",
            &[
                ("lib.rs", "mod a; mod b;"),
                (
                    "a/mod.rs",
                    "mod c;\nuse crate::{x, b::{Thing, other as o}};",
                ),
                ("a/c.rs", "fn f() { super::super::b::g(); }"),
                (
                    "b.rs",
                    "// crate::a::nothing in a comment\nfn g() { let s = \"crate::a\"; crate::a::c::f(); }",
                ),
            ],
        );
        let m = |path: &[&str]| path.iter().map(|s| (*s).to_owned()).collect::<Module>();
        // a -> b and a::c -> b; b -> a::c (b's mention of `crate::a` in a
        // comment and a string does not count).
        assert_eq!(graph.cycles(), vec![vec![m(&["a"]), m(&["b"])]]);
    }

    #[test]
    fn a_parent_and_its_child_are_not_a_cycle_and_strings_are_not_paths() {
        let graph = graph_of(
            "ownership",
            &[
                ("lib.rs", "mod a;"),
                ("a/mod.rs", "mod c;\nuse self::c::Item;"),
                (
                    "a/c.rs",
                    "use super::Other; const S: &str = r#\"crate::x\"#; fn l<'a>(x: &'a u8) -> char { 'x' }",
                ),
            ],
        );
        assert_eq!(graph.cycles(), Vec::<Vec<Module>>::new());
    }
}
