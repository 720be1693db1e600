//! `cargo xtask modgraph`: the shape checks of the `profilemate` crate that the compiler does
//! not make. It reads `profilemate/src` as text and fails when
//! - the top-level modules import each other in a circle (every `crate::x` path of production
//!   code, `use` lines and inline paths alike, is an edge from the file's top-level module to
//!   `x`), or
//! - a production function is longer than `MAX_FN_LINES` lines.
//!
//! Production code is everything but `#[cfg(test)]` items and `tests.rs` / `tests/` files.
//! It owns no knowledge of what the modules do; the graph it prints is the one
//! docs/DESIGN.md shows.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// The longest production function allowed, in lines from `fn` to its closing brace.
pub const MAX_FN_LINES: usize = 100;

/// Module graph and longest functions of one source tree.
pub struct Shape {
    /// Top-level module -> the top-level modules it uses.
    pub edges: BTreeMap<String, BTreeSet<String>>,
    /// (lines, file, line, function), longest first.
    pub functions: Vec<(usize, String, usize, String)>,
}

/// Reads every `.rs` file under `src` (the `profilemate` crate's source directory).
pub fn analyse(src: &Path) -> Result<Shape> {
    let mut files = Vec::new();
    collect(src, &mut files)?;
    files.sort();
    // Each production file with its top-level module and its text without comments, strings
    // and test items.
    let mut sources = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap_or(&file).to_path_buf();
        if rel
            .components()
            .any(|c| c.as_os_str() == "tests" || c.as_os_str() == "tests.rs")
        {
            continue;
        }
        let Some(module) = top_module(&rel) else {
            continue;
        };
        let text =
            fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        sources.push((rel, module, without_tests(&strip(&text))));
    }
    // `crate::x` names a module, or a `#[macro_export]` macro (an edge to where it is
    // defined), or an item of the crate root (no edge).
    let mut names: BTreeMap<String, String> = sources
        .iter()
        .map(|(_, m, _)| (m.clone(), m.clone()))
        .collect();
    for (_, module, code) in &sources {
        for name in exported_macros(code) {
            names.insert(name, module.clone());
        }
    }
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut functions = Vec::new();
    for (rel, module, code) in &sources {
        let deps = edges.entry(module.clone()).or_default();
        for dep in crate_paths(code).iter().filter_map(|p| names.get(p)) {
            if dep != module {
                deps.insert(dep.clone());
            }
        }
        for (start, lines, name) in fn_lengths(code) {
            functions.push((lines, rel.display().to_string(), start, name));
        }
    }
    functions.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    Ok(Shape { edges, functions })
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// `session/mod.rs` -> `session`, `pipeline.rs` -> `pipeline`; the crate roots -> None.
fn top_module(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    if rel.components().count() > 1 {
        return Some(first.to_owned());
    }
    let stem = first.strip_suffix(".rs")?;
    (stem != "lib" && stem != "main").then(|| stem.to_owned())
}

/// The text with comments, string and char literals blanked (newlines kept, so line numbers
/// stay).
fn strip(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |out: &mut String, s: &[u8]| {
        for &c in s {
            out.push(if c == b'\n' { '\n' } else { ' ' });
        }
    };
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest.starts_with(b"/*") {
            let mut depth = 0usize;
            let mut j = 0;
            while j < rest.len() {
                if rest[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, &rest[..j]);
            i += j;
        } else if let Some(len) = raw_string_len(rest) {
            out.push('"');
            blank(&mut out, &rest[1..len - 1]);
            out.push('"');
            i += len;
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(rest.len());
            out.push('"');
            blank(&mut out, &rest[1..end.saturating_sub(1).max(1)]);
            out.push('"');
            i += end;
        } else if rest[0] == b'\'' && char_literal_len(rest).is_some() {
            let len = char_literal_len(rest).unwrap_or(1);
            blank(&mut out, &rest[..len]);
            i += len;
        } else {
            let ch = text[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Length of a raw string literal (`r"…"`, `r#"…"#`, `br"…"`) starting at `b`.
fn raw_string_len(b: &[u8]) -> Option<usize> {
    let start = if b.starts_with(b"br") {
        2
    } else if b.starts_with(b"r") {
        1
    } else {
        return None;
    };
    let hashes = b[start..].iter().take_while(|&&c| c == b'#').count();
    if b.get(start + hashes) != Some(&b'"') {
        return None;
    }
    let mut close = vec![b'"'];
    close.extend(std::iter::repeat_n(b'#', hashes));
    let body = start + hashes + 1;
    let end = b[body..]
        .windows(close.len())
        .position(|w| w == close.as_slice())?;
    Some(body + end + close.len())
}

/// Length of a char literal (`'a'`, `'\n'`, `'\''`) starting at `b`; None for a lifetime.
fn char_literal_len(b: &[u8]) -> Option<usize> {
    if b.get(1) == Some(&b'\\') {
        let end = b[2..].iter().take(10).position(|&c| c == b'\'')?;
        return Some(end + 3);
    }
    let s = std::str::from_utf8(&b[1..b.len().min(6)])
        .unwrap_or_else(|e| std::str::from_utf8(&b[1..1 + e.valid_up_to()]).unwrap_or(""));
    let c = s.chars().next()?;
    (s[c.len_utf8()..].starts_with('\'')).then(|| 2 + c.len_utf8())
}

/// Blanks every item that follows `#[cfg(test)]` (a `mod tests { … }`, a `use …;`).
fn without_tests(code: &str) -> String {
    let mut out = code.as_bytes().to_vec();
    let mut from = 0;
    while let Some(pos) = code[from..].find("#[cfg(test)]") {
        let start = from + pos;
        let b = code.as_bytes();
        let mut j = start + "#[cfg(test)]".len();
        let mut depth = 0usize;
        while j < b.len() {
            match b[j] {
                b';' if depth == 0 => {
                    j += 1;
                    break;
                }
                b'{' => depth += 1,
                b'}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        j += 1;
                        break;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        for c in &mut out[start..j.min(b.len())] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
        from = j.min(b.len());
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Names of the `#[macro_export]` macros defined in `code`.
fn exported_macros(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(pos) = code[from..].find("#[macro_export]") {
        let at = from + pos + "#[macro_export]".len();
        from = at;
        let rest = code[at..].trim_start();
        if let Some(after) = rest.strip_prefix("macro_rules!") {
            let after = after.trim_start();
            let end = after.bytes().take_while(|&c| is_ident(c)).count();
            found.push(after[..end].to_owned());
        }
    }
    found
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The first segment of every `crate::…` path (each member of a `crate::{…}` group).
fn crate_paths(code: &str) -> BTreeSet<String> {
    let b = code.as_bytes();
    let mut deps = BTreeSet::new();
    let mut from = 0;
    while let Some(pos) = code[from..].find("crate::") {
        let at = from + pos;
        from = at + "crate::".len();
        if at > 0 && (is_ident(b[at - 1]) || b[at - 1] == b'$') {
            continue;
        }
        let mut j = skip_ws(b, from);
        if b.get(j) == Some(&b'{') {
            // A group: the first identifier of each top-level member.
            let mut depth = 0usize;
            let mut expect = true;
            while j < b.len() {
                match b[j] {
                    b'{' => {
                        depth += 1;
                        j += 1;
                    }
                    b'}' => {
                        depth -= 1;
                        j += 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    b',' if depth == 1 => {
                        expect = true;
                        j += 1;
                    }
                    c if expect && depth == 1 && is_ident(c) => {
                        let end = j + b[j..].iter().take_while(|&&c| is_ident(c)).count();
                        deps.insert(code[j..end].to_owned());
                        expect = false;
                        j = end;
                    }
                    _ => j += 1,
                }
            }
        } else {
            let end = j + b[j..].iter().take_while(|&&c| is_ident(c)).count();
            if end > j {
                deps.insert(code[j..end].to_owned());
            }
            j = end;
        }
        from = j.max(from);
    }
    deps.remove("self");
    deps
}

fn skip_ws(b: &[u8], mut j: usize) -> usize {
    while j < b.len() && b[j].is_ascii_whitespace() {
        j += 1;
    }
    j
}

/// (first line, lines, name) of every function with a body.
fn fn_lengths(code: &str) -> Vec<(usize, usize, String)> {
    let b = code.as_bytes();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(pos) = code[from..].find("fn") {
        let at = from + pos;
        from = at + 2;
        if (at > 0 && is_ident(b[at - 1]))
            || b.get(at + 2).is_none_or(|&c| !c.is_ascii_whitespace())
        {
            continue;
        }
        let name_at = skip_ws(b, at + 2);
        let name_end = name_at + b[name_at..].iter().take_while(|&&c| is_ident(c)).count();
        if name_end == name_at {
            continue;
        }
        // The body: the first `{` outside parentheses/brackets, unless a `;` comes first.
        let mut j = name_end;
        let mut parens = 0i32;
        let mut body = None;
        while j < b.len() {
            match b[j] {
                b'(' | b'[' => parens += 1,
                b')' | b']' => parens -= 1,
                b';' if parens == 0 => break,
                b'{' if parens == 0 => {
                    body = Some(j);
                    break;
                }
                _ => {}
            }
            j += 1;
        }
        let Some(open) = body else { continue };
        let mut depth = 0usize;
        let mut close = open;
        for (k, &c) in b.iter().enumerate().skip(open) {
            if c == b'{' {
                depth += 1;
            } else if c == b'}' {
                depth -= 1;
                if depth == 0 {
                    close = k;
                    break;
                }
            }
        }
        let first = line_of(code, at);
        let last = line_of(code, close);
        found.push((first, last - first + 1, code[name_at..name_end].to_owned()));
    }
    found
}

fn line_of(code: &str, at: usize) -> usize {
    code[..at].bytes().filter(|&c| c == b'\n').count() + 1
}

/// A circle of the graph, if there is one (the modules in order, the first repeated last).
pub fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    // Colours: 0 unseen, 1 on the current path, 2 done.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        colour: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        colour.insert(node.to_owned(), 1);
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            match colour.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = path.iter().position(|p| p == next).unwrap_or(0);
                    let mut cycle = path[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(next, edges, colour, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        colour.insert(node.to_owned(), 2);
        None
    }
    let mut colour = BTreeMap::new();
    for node in edges.keys() {
        if colour.get(node.as_str()).copied().unwrap_or(0) == 0 {
            let mut path = Vec::new();
            if let Some(c) = visit(node, edges, &mut colour, &mut path) {
                return Some(c);
            }
        }
    }
    None
}

/// The modules in dependency order (those that use nothing first), one line each.
pub fn render(shape: &Shape) -> String {
    let mut out = String::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut layer = 0;
    while done.len() < shape.edges.len() {
        let ready: Vec<&String> = shape
            .edges
            .iter()
            .filter(|(m, deps)| {
                !done.contains(*m)
                    && deps
                        .iter()
                        .all(|d| done.contains(d) || !shape.edges.contains_key(d))
            })
            .map(|(m, _)| m)
            .collect();
        if ready.is_empty() {
            break;
        }
        for m in &ready {
            let deps: Vec<&str> = shape.edges[*m].iter().map(String::as_str).collect();
            let _ = writeln!(out, "{layer:>2}  {m:<16} <- {}", deps.join(", "));
        }
        done.extend(ready.into_iter().cloned());
        layer += 1;
    }
    out
}

/// The command: prints the graph by layer and the longest functions; fails on a circle or a
/// function over the limit.
pub fn run() -> Result<()> {
    let shape = analyse(&crate::root().join("profilemate/src"))?;
    print!("{}", render(&shape));
    let longest: Vec<String> = shape
        .functions
        .iter()
        .take(5)
        .map(|(n, f, l, name)| format!("{n} lines  {f}:{l}  {name}"))
        .collect();
    println!("longest production functions:\n  {}", longest.join("\n  "));
    check(&shape)?;
    println!("no import circle; no production function over {MAX_FN_LINES} lines");
    Ok(())
}

/// Fails on a circle or an over-long function.
pub fn check(shape: &Shape) -> Result<()> {
    if let Some(cycle) = find_cycle(&shape.edges) {
        bail!(
            "import circle between top-level modules: {}",
            cycle.join(" -> ")
        );
    }
    let long = overlong(shape);
    if !long.is_empty() {
        bail!(
            "production functions over {MAX_FN_LINES} lines:\n  {}",
            long.join("\n  ")
        );
    }
    Ok(())
}

/// The production functions over `MAX_FN_LINES`.
pub fn overlong(shape: &Shape) -> Vec<String> {
    shape
        .functions
        .iter()
        .filter(|f| f.0 > MAX_FN_LINES)
        .map(|(n, f, l, name)| format!("{f}:{l} {name} ({n} lines)"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_members_and_inline_paths_are_edges_but_test_modules_are_not() {
        let code = strip(
            "use crate::{a::X, b::{c, d}};\nfn f() { crate::e::g(); let s = \"crate::z\"; }\n\
             #[cfg(test)]\nmod tests { use crate::t; }\n",
        );
        let deps = crate_paths(&without_tests(&code));
        assert_eq!(
            deps.into_iter().collect::<Vec<_>>(),
            ["a", "b", "e"].map(String::from)
        );
    }

    #[test]
    fn a_circle_is_found_and_named() {
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        edges.entry("a".into()).or_default().insert("b".into());
        edges.entry("b".into()).or_default().insert("c".into());
        edges.entry("c".into()).or_default().insert("a".into());
        assert_eq!(
            find_cycle(&edges),
            Some(["a", "b", "c", "a"].map(String::from).to_vec())
        );
        if let Some(d) = edges.get_mut("c") {
            d.clear();
        }
        assert_eq!(find_cycle(&edges), None);
    }

    #[test]
    fn function_length_counts_from_fn_to_its_closing_brace() {
        let code =
            strip("trait T { fn d(&self); }\nfn f(x: u8) -> u8 {\n    let c = '}';\n    x\n}\n");
        assert_eq!(fn_lengths(&code), vec![(2, 4, "f".to_owned())]);
    }

    /// The crate itself: no circle between its top-level modules, no production function
    /// over the limit.
    #[test]
    fn profilemate_has_no_import_circle_and_no_overlong_function() {
        let shape = analyse(&crate::root().join("profilemate/src"))
            .unwrap_or_else(|e| panic!("reading profilemate/src: {e:#}"));
        if let Err(e) = check(&shape) {
            panic!("{e:#}\n{}", render(&shape));
        }
    }
}
