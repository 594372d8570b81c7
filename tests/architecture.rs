//! The shape of `src/`, checked: no import cycle between modules, and no file over 800 lines
//! (the kernels excepted).
//!
//! Each file of `src/` is mapped to its module path (`src/tui/app.rs` is `tui::app`), and every
//! `crate::a::b` and `super::...` path in it, in `use` items (groups included) and in
//! expressions, is resolved to an absolute path. A path from module `P` to `T` is an edge
//! between the two children of their deepest common ancestor: `tui::app` → `crate::tui::view`
//! is `app → view` inside `tui`, `cache::policy` → `crate::generate::X` is `cache → generate`
//! at the top. A module's references to its ancestors or its descendants are no edges, and
//! neither are comments, strings and `#[cfg(test)]` items (test code may reach anywhere).
//! Every strongly connected set of two or more modules is a cycle; the test prints each with
//! the edges inside it and where each edge comes from.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The most lines a file in `src/` may have.
const MAX_LINES: usize = 800;

/// Files allowed past [`MAX_LINES`]: the hand-written SIMD kernels.
fn exempt(rel: &str) -> bool {
    rel == "kernels.rs" || rel.starts_with("kernels/")
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/`'s files with their path relative to `src/`, `/`-separated.
fn sources() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(&src)
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{rel}: {e}"));
            (rel, text)
        })
        .collect()
}

/// The module path of a library file (`tui/app.rs` → `["tui", "app"]`, `lib.rs` → `[]`), or
/// `None` for the binary's root.
fn module_path(rel: &str) -> Option<Vec<String>> {
    if rel == "main.rs" {
        return None;
    }
    if rel == "lib.rs" {
        return Some(Vec::new());
    }
    let stem = rel.strip_suffix(".rs")?;
    let mut parts: Vec<String> = stem.split('/').map(str::to_owned).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    Some(parts)
}

/// `text` with comments, string and character literals blanked out (newlines kept, so line
/// numbers stay), and `#[cfg(test)]` items removed.
fn code_only(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || (next == Some('#') && raw_string_at(&b, i + 1)))
            && !b.get(i.wrapping_sub(1)).is_some_and(|p| is_ident(*p))
        {
            // r"..." or r#"..."#
            let mut hashes = 0;
            i += 1;
            while b.get(i) == Some(&'#') {
                hashes += 1;
                i += 1;
            }
            i += 1; // the opening quote
            while i < b.len() {
                if b[i] == '"' && (1..=hashes).all(|k| b.get(i + k) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                blank(&mut out, b[i]);
                i += 1;
            }
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    blank(&mut out, b[i]);
                    i += 1;
                }
                if i < b.len() {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
            i += 1;
        } else if c == '\'' {
            // A character literal ('a', '\n', '\u{E000}'), else a lifetime.
            if next == Some('\\') {
                i += 3;
                while i < b.len() && b[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    strip_cfg_test(&out)
}

fn raw_string_at(b: &[char], mut i: usize) -> bool {
    while b.get(i) == Some(&'#') {
        i += 1;
    }
    b.get(i) == Some(&'"')
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Removes each item after `#[cfg(test)]`: up to its `;` or its matching `}`.
fn strip_cfg_test(code: &str) -> String {
    let mut out = code.to_owned();
    while let Some(at) = out.find("#[cfg(test)]") {
        let b: Vec<char> = out.chars().collect();
        let start = out[..at].chars().count();
        let mut i = start + "#[cfg(test)]".len();
        let mut depth = 0usize;
        while i < b.len() {
            match b[i] {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        i += 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    i += 1;
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        let end = i.min(b.len());
        let replaced: String = b[start..end]
            .iter()
            .map(|c| if *c == '\n' { '\n' } else { ' ' })
            .collect();
        out = b[..start]
            .iter()
            .chain(replaced.chars().collect::<Vec<_>>().iter())
            .chain(b[end..].iter())
            .collect();
    }
    out
}

/// Tokens: identifiers, `::`, and single punctuation characters, each with its line.
fn tokens(code: &str) -> Vec<(String, usize)> {
    let b: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < b.len() {
        let c = b[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if is_ident(c) {
            let s = i;
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            out.push((b[s..i].iter().collect(), line));
        } else if c == ':' && b.get(i + 1) == Some(&':') {
            out.push(("::".into(), line));
            i += 2;
        } else {
            out.push((c.to_string(), line));
            i += 1;
        }
    }
    out
}

/// The paths of a use tree or an expression path starting at `toks[i]` (after `crate::`,
/// `super::` or `self::`), as segment lists; `{a, b::{c, d}}` groups expand.
fn paths_at(
    toks: &[(String, usize)],
    i: &mut usize,
    prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) {
    let mut path = prefix;
    loop {
        let Some((t, _)) = toks.get(*i) else {
            out.push(path);
            return;
        };
        if t == "{" {
            *i += 1;
            loop {
                match toks.get(*i).map(|t| t.0.as_str()) {
                    Some("}") => {
                        *i += 1;
                        return;
                    }
                    Some(",") => *i += 1,
                    None => return,
                    Some(_) => paths_at(toks, i, path.clone(), out),
                }
            }
        }
        if t.chars().next().is_some_and(is_ident) && t != "as" {
            // `{self, ...}` names the path itself.
            if t != "self" {
                path.push(t.clone());
            }
            *i += 1;
            if toks.get(*i).is_some_and(|t| t.0 == "::") {
                *i += 1;
                continue;
            }
        }
        // `as name`, a `*`, or the end of an expression path.
        if toks.get(*i).is_some_and(|t| t.0 == "as") {
            *i += 2;
        } else if toks.get(*i).is_some_and(|t| t.0 == "*") {
            *i += 1;
        }
        out.push(path);
        return;
    }
}

/// Every absolute path a file refers to through `crate::`, `super::` or `self::`, with its
/// line.
fn references(module: &[String], code: &str) -> Vec<(Vec<String>, usize)> {
    let toks = tokens(code);
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let (t, line) = (&toks[i].0, toks[i].1);
        let preceded_by_path = i > 0 && (toks[i - 1].0 == "::" || toks[i - 1].0 == "$");
        let start = match t.as_str() {
            "crate" | "super" | "self" if !preceded_by_path => {
                toks.get(i + 1).is_some_and(|n| n.0 == "::")
            }
            _ => false,
        };
        if !start {
            i += 1;
            continue;
        }
        // The base, then any further `super::`.
        let mut base: Vec<String> = match t.as_str() {
            "crate" => Vec::new(),
            "super" => module[..module.len().saturating_sub(1)].to_vec(),
            _ => module.to_vec(),
        };
        i += 2;
        while toks.get(i).is_some_and(|t| t.0 == "super")
            && toks.get(i + 1).is_some_and(|t| t.0 == "::")
        {
            base.pop();
            i += 2;
        }
        let mut paths = Vec::new();
        paths_at(&toks, &mut i, base, &mut paths);
        out.extend(paths.into_iter().map(|p| (p, line)));
    }
    out
}

/// One edge between sibling modules, with where it comes from.
#[derive(Default)]
struct Graph {
    /// parent module → (from child, to child) → first `file:line` that makes the edge.
    edges: BTreeMap<Vec<String>, BTreeMap<(String, String), String>>,
}

fn graph(files: &[(String, String)]) -> Graph {
    let modules: BTreeSet<Vec<String>> = files
        .iter()
        .filter_map(|(rel, _)| module_path(rel))
        .collect();
    let mut g = Graph::default();
    for (rel, text) in files {
        let Some(module) = module_path(rel) else {
            continue;
        };
        for (target, line) in references(&module, &code_only(text)) {
            // The depth where the two paths part.
            let k = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if k >= module.len() || k >= target.len() {
                continue; // an ancestor or a descendant
            }
            let to = target[..=k].to_vec();
            if !modules.contains(&to) {
                continue; // an item of the common ancestor, not a module
            }
            g.edges
                .entry(module[..k].to_vec())
                .or_default()
                .entry((module[k].clone(), target[k].clone()))
                .or_insert_with(|| format!("src/{rel}:{line}"));
        }
    }
    g
}

/// The strongly connected sets of two or more nodes (Tarjan).
fn cycles(edges: &BTreeMap<(String, String), String>) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = edges.keys().flat_map(|(a, b)| [a, b]).collect();
    let nodes: Vec<&String> = nodes.into_iter().collect();
    let index_of = |n: &String| nodes.iter().position(|m| *m == n).expect("a node");
    let adj: Vec<Vec<usize>> = nodes
        .iter()
        .map(|n| {
            edges
                .keys()
                .filter(|(a, _)| a == *n)
                .map(|(_, b)| index_of(b))
                .collect()
        })
        .collect();
    struct T<'a> {
        adj: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(t: &mut T<'_>, v: usize) {
        t.index[v] = Some(t.next);
        t.low[v] = t.next;
        t.next += 1;
        t.stack.push(v);
        t.on[v] = true;
        for &w in &t.adj[v] {
            match t.index[w] {
                None => {
                    visit(t, w);
                    t.low[v] = t.low[v].min(t.low[w]);
                }
                Some(iw) if t.on[w] => t.low[v] = t.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(t.low[v]) == t.index[v] {
            let mut set = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on[w] = false;
                set.push(w);
                if w == v {
                    break;
                }
            }
            if set.len() > 1 {
                t.out.push(set);
            }
        }
    }
    let n = nodes.len();
    let mut t = T {
        adj: &adj,
        index: vec![None; n],
        low: vec![0; n],
        on: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if t.index[v].is_none() {
            visit(&mut t, v);
        }
    }
    t.out
        .into_iter()
        .map(|set| {
            let mut names: Vec<String> = set.into_iter().map(|i| nodes[i].clone()).collect();
            names.sort();
            names
        })
        .collect()
}

/// Every cycle of `files`, one description each.
fn find_cycles(files: &[(String, String)]) -> Vec<String> {
    let g = graph(files);
    let mut found = Vec::new();
    for (parent, edges) in &g.edges {
        let place = if parent.is_empty() {
            "top level".to_owned()
        } else {
            format!("inside {}", parent.join("::"))
        };
        for set in cycles(edges) {
            let mut text = format!("cycle ({place}): {}", set.join(" <-> "));
            for ((a, b), at) in edges {
                if set.contains(a) && set.contains(b) {
                    text.push_str(&format!("\n    {a} -> {b}  ({at})"));
                }
            }
            found.push(text);
        }
    }
    found
}

#[test]
fn no_import_cycle_in_src() {
    let found = find_cycles(&sources());
    for c in &found {
        eprintln!("{c}");
    }
    assert!(
        found.is_empty(),
        "{} import cycle(s) in src/:\n{}",
        found.len(),
        found.join("\n")
    );
}

#[test]
fn no_file_in_src_over_800_lines() {
    let big: Vec<String> = sources()
        .iter()
        .filter(|(rel, _)| !exempt(rel))
        .filter_map(|(rel, text)| {
            let n = text.lines().count();
            (n > MAX_LINES).then(|| format!("src/{rel}: {n} lines"))
        })
        .collect();
    for b in &big {
        eprintln!("{b}");
    }
    assert!(
        big.is_empty(),
        "files over {MAX_LINES} lines:\n{}",
        big.join("\n")
    );
}

/// The checker itself, on made-up sources: it must see cycles through `use` groups, `super::`
/// and expression paths, and none through comments, strings, tests or parent/child links.
#[test]
fn the_checker_finds_cycles_and_only_cycles() {
    let files = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    };
    let cyclic = files(&[
        ("lib.rs", "pub mod a; pub mod b; pub mod t;"),
        ("a.rs", "use crate::{x::Y, b::{self, Z}};"),
        ("b.rs", "fn f() { let _ = crate::a::g(); }"),
        ("x.rs", ""),
        ("t.rs", "mod app; mod view;"),
        ("t/app.rs", "use super::view::draw;"),
        (
            "t/view.rs",
            "fn f() -> super::super::t::app::App { todo!() }",
        ),
    ]);
    let found = find_cycles(&cyclic);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].starts_with("cycle (top level): a <-> b"),
        "{found:#?}"
    );
    assert!(found[0].contains("a -> b  (src/a.rs:1)"), "{found:#?}");
    assert!(
        found[1].starts_with("cycle (inside t): app <-> view"),
        "{found:#?}"
    );

    let clean = files(&[
        ("lib.rs", "pub mod a; pub mod b;"),
        ("a.rs", "// crate::b::x\nconst S: &str = \"crate::b::x\";\nconst R: &str = r#\"crate::b\"#;\nfn f<'a>(c: char) -> bool { c == '\\'' || c == 'b' }\nuse crate::b::Thing;"),
        ("b.rs", "mod inner;\npub use inner::Thing;\n#[cfg(test)]\nmod tests { use crate::a::f; }\n/// [`crate::a`]\nfn g() {}"),
        ("b/inner.rs", "use super::g; use crate::b::other; pub struct Thing;"),
    ]);
    assert_eq!(find_cycles(&clean), Vec::<String>::new());
}
