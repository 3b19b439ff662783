//! The shape of the source, checked from the code (DESIGN.md): no import
//! circle between the files of `src/`, the server does not import the
//! built-in applications, and no file holds two jobs' worth of lines.
//!
//! An edge A → B is any path in A that names module file B: `use` trees
//! (braces expanded), `crate::`/`super::`/`self::` paths in code, and a
//! module's paths to its own children. A file's use of its own folder's
//! module file (`super::` from `server/worker.rs` to `server/mod.rs`) is
//! not an edge: that is where its siblings are declared.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`["server", "worker"]`) → file, for one crate.
type Modules = BTreeMap<Vec<String>, PathBuf>;
/// File A names file B (by module path).
type Edges = BTreeSet<(Vec<String>, Vec<String>)>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of `file` under the crate root folder `root`.
fn module_of(root: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(root).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// Source without comments, string and char literals (so neither
/// documentation nor messages count as paths).
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i + 1 < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')) {
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
            let end: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            while j < b.len() && !b[j..].starts_with(&end) {
                j += 1;
            }
            i = j + end.len();
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            i += 3; // 'x'
        } else if b[i] == b'\'' && b.get(i + 1) == Some(&b'\\') {
            i += 2;
            while i < b.len() && b[i] != b'\'' {
                i += 1;
            }
            i += 1;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into paths.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.split_whitespace().collect();
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(&format!("{prefix}{p}")))
        .collect()
}

/// Every path the code names, with how many inline `mod x {` blocks
/// enclose it (inside one, `super` is the file's own module).
fn paths(code: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut inline: Vec<usize> = Vec::new(); // brace depth at each inline mod
    let mut depth = 0usize;
    let b = code.as_bytes();
    let mut i = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < b.len() {
        let word_start = i == 0 || !ident(b[i - 1]);
        if b[i] == b'{' {
            depth += 1;
        } else if b[i] == b'}' {
            depth = depth.saturating_sub(1);
            if inline.last() == Some(&depth) {
                inline.pop();
            }
        } else if word_start && code[i..].starts_with("mod ") {
            let rest = &code[i + 4..];
            let name_len = rest.bytes().take_while(|c| ident(*c)).count();
            if rest[name_len..].trim_start().starts_with('{') {
                inline.push(depth);
            }
        } else if word_start && code[i..].starts_with("use ") {
            let end = code[i..].find(';').map_or(code.len(), |e| i + e);
            for p in expand(&code[i + 4..end]) {
                out.push((p, inline.len()));
            }
            i = end;
            continue;
        } else if word_start && ident(b[i]) {
            let len = b[i..]
                .iter()
                .take_while(|c| ident(**c) || **c == b':')
                .count();
            let p = &code[i..i + len];
            if p.contains("::") {
                out.push((p.trim_end_matches(':').to_string(), inline.len()));
            }
            i += len.max(1);
            continue;
        }
        i += 1;
    }
    out
}

/// The deepest module file a path names from module `at`, if any.
fn resolve(mods: &Modules, at: &[String], path: &str, inline: usize) -> Option<Vec<String>> {
    let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<String> = match segs.first().copied() {
        Some("crate") => {
            segs.remove(0);
            Vec::new()
        }
        Some("super") => {
            let mut b = at.to_vec();
            let mut up: usize = 0;
            while segs.first() == Some(&"super") {
                segs.remove(0);
                up += 1;
            }
            // Inside an inline `mod tests {`, the first `super` is the file.
            for _ in 0..up.saturating_sub(inline) {
                b.pop()?;
            }
            b
        }
        Some("self") => {
            segs.remove(0);
            at.to_vec()
        }
        // A path from the current module: a child's name, or anything else.
        Some(first) if mods.contains_key(&[at, &[first.to_string()]].concat()) => at.to_vec(),
        _ => return None,
    };
    for s in segs {
        let mut next = base.clone();
        next.push(s.to_string());
        if mods.contains_key(&next) {
            base = next;
        } else {
            break;
        }
    }
    Some(base)
}

/// The file edges of one crate rooted at `root` (files under `skip` left out).
fn edges(root: &Path, skip: Option<&Path>) -> (Modules, Edges) {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    files.retain(|f| skip.is_none_or(|s| !f.starts_with(s)));
    let mods: Modules = files
        .iter()
        .map(|f| (module_of(root, f), f.clone()))
        .collect();
    let mut out = BTreeSet::new();
    for (m, f) in &mods {
        let code = code_only(&std::fs::read_to_string(f).unwrap());
        let parent: &[String] = if m.is_empty() { m } else { &m[..m.len() - 1] };
        for (p, inline) in paths(&code) {
            let Some(target) = resolve(&mods, m, &p, inline) else {
                continue;
            };
            // Not itself, and not its own folder's module file.
            if target != *m && target != parent {
                out.insert((m.clone(), target));
            }
        }
    }
    (mods, out)
}

/// Every cycle's files, one cycle per strongly connected component.
fn cycles(edges: &Edges) -> Vec<Vec<String>> {
    let mut graph: BTreeMap<&Vec<String>, Vec<&Vec<String>>> = BTreeMap::new();
    for (a, b) in edges {
        graph.entry(a).or_default().push(b);
        graph.entry(b).or_default();
    }
    let mut out = Vec::new();
    for start in graph.keys() {
        // A path back to `start` through nodes greater than it (each cycle
        // reported once, from its least file).
        let mut stack = vec![(*start, vec![(*start).clone()])];
        let mut seen = BTreeSet::new();
        while let Some((node, trail)) = stack.pop() {
            for next in &graph[node] {
                if next == start {
                    out.push(trail.iter().map(|m| m.join("::")).collect());
                    stack.clear();
                    break;
                }
                if *next > *start && seen.insert(*next) {
                    let mut t = trail.clone();
                    t.push((*next).clone());
                    stack.push((next, t));
                }
            }
        }
    }
    out
}

#[test]
fn no_import_circle_between_the_files_of_src() {
    let lib = Path::new("src");
    let (lib_mods, lib_edges) = edges(lib, Some(&lib.join("bin")));
    assert!(lib_mods.len() > 40, "read {} library files", lib_mods.len());
    // The checker sees real edges (a broken parser would see none).
    let worker = vec!["server".to_string(), "worker".to_string()];
    let runs = vec!["runs".to_string()];
    assert!(lib_edges.contains(&(worker.clone(), runs)), "worker → runs");
    assert!(
        lib_edges.contains(&(worker, vec!["server".into(), "entry".into()])),
        "worker → its sibling entry"
    );
    let found = cycles(&lib_edges);
    assert!(
        found.is_empty(),
        "import circles in the library: {found:#?}"
    );
    let bin = Path::new("src/bin/pollcap");
    let (_, bin_edges) = edges(bin, None);
    let found = cycles(&bin_edges);
    assert!(found.is_empty(), "import circles in the binary: {found:#?}");
}

#[test]
fn the_checker_finds_a_circle_when_there_is_one() {
    let mut e = BTreeSet::new();
    let m = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
    e.insert((m("server::runs"), m("server::worker")));
    e.insert((m("server::worker"), m("server::runs")));
    e.insert((m("settings::decl"), m("store")));
    e.insert((m("store"), m("settings")));
    e.insert((m("settings"), m("settings::decl")));
    assert_eq!(cycles(&e).len(), 2);
    // Paths as the parser reads them.
    let code = code_only(
        "use super::{Shared, worker::{Entry, Worker}};\n// crate::x::y\nfn f() { crate::store::Store::start(\"crate::a\"); }\nmod tests { use super::*; }",
    );
    let p: Vec<(String, usize)> = paths(&code);
    assert!(p.contains(&("super::worker::Worker".into(), 0)), "{p:?}");
    assert!(
        p.contains(&("crate::store::Store::start".into(), 0)),
        "{p:?}"
    );
    assert!(p.contains(&("super::*".into(), 1)), "{p:?}");
    assert!(
        !p.iter()
            .any(|(p, _)| p.contains("crate::x") || p.contains("crate::a"))
    );
}

#[test]
fn the_server_knows_applications_only_through_the_handler_api() {
    let (_, e) = edges(Path::new("src"), Some(Path::new("src/bin")));
    let bad: Vec<_> = e
        .iter()
        .filter(|(a, b)| {
            a.first().is_some_and(|s| s == "server") && b.first().is_some_and(|s| s == "apps")
        })
        .collect();
    assert!(bad.is_empty(), "the server imports an application: {bad:?}");
    // Nor does the run layer, nor any source.
    let bad: Vec<_> = e
        .iter()
        .filter(|(a, b)| {
            a.first()
                .is_some_and(|s| s == "runs" || s == "source" || s == "conn")
                && b.first().is_some_and(|s| s == "apps" || s == "server")
        })
        .collect();
    assert!(
        bad.is_empty(),
        "a lower layer imports an upper one: {bad:?}"
    );
}

#[test]
fn no_file_in_src_holds_more_than_700_lines_but_the_settings_table() {
    let mut files = Vec::new();
    rust_files(Path::new("src"), &mut files);
    let long: Vec<(PathBuf, usize)> = files
        .into_iter()
        .filter(|f| !f.ends_with("settings/decl.rs"))
        .map(|f| {
            let n = std::fs::read_to_string(&f).unwrap().lines().count();
            (f, n)
        })
        .filter(|(_, n)| *n > 700)
        .collect();
    assert!(long.is_empty(), "files over 700 lines: {long:?}");
}
