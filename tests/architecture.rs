//! The layering of `src/`, kept by a test (as rust-analyzer's tidy tests keep theirs): every
//! `crate::…` and `super::…` path outside a file's `#[cfg(test)] mod tests { … }` block is read, and
//! the build fails naming the file and line when a module reaches one above it, or the crate root
//! (`lib.rs` only wires: nothing is imported from it), when the files of one folder import each
//! other in a circle, when a file grows past 600 lines before its tests, or when ARCHITECTURE.md's
//! layer table is not this file's `LAYERS`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules of `src/`, lowest layer first. A module may import only modules of lower
/// layers; modules of one layer do not import each other.
const LAYERS: &[&[&str]] = &[
    &["error", "json", "secret", "background", "metrics"],
    &["model", "auth", "tls"],
    &["repository"],
    &["traffic"],
    &["registry"],
    &["outcomes", "executor"],
    &["compare"],
    &["join", "cluster"],
    &["drift", "promotion", "analyst", "history"],
    &["shadow"],
    &["config"],
    // The gateway and the request path both protocols share, from admission to the record.
    &["inference"],
    &["http", "grpc"],
    // The process (`server`) and the CLI, which reads the admin API's answers into its view types.
    &["cli", "server"],
];

/// Lines a file may have before its `#[cfg(test)]` module.
const MAX_LINES: usize = 600;

/// One `src/` file: its module path (`["registry", "store"]`), and its text before its tests.
struct Source {
    file: PathBuf,
    module: Vec<String>,
    is_mod_rs: bool,
    /// The file's text, its tests block blanked (line numbers stay true).
    text: String,
    /// Its lines outside the tests block.
    lines: usize,
}

fn sources() -> Vec<Source> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|file| {
            let relative = file.strip_prefix(&src).unwrap().with_extension("");
            let mut module: Vec<String> = relative.iter().map(|s| s.to_string_lossy().into_owned()).collect();
            if module == ["lib"] || module == ["main"] {
                return None;
            }
            let is_mod_rs = module.last().is_some_and(|m| m == "mod");
            if is_mod_rs {
                module.pop();
            }
            let original = std::fs::read_to_string(&file).unwrap();
            let text = without_tests_block(&original);
            let lines =
                original.lines().count() - tests_block(&original).map_or(0, |(a, b)| original[a..=b].lines().count());
            Some(Source { file, module, is_mod_rs, text, lines })
        })
        .collect()
}

/// The file with its `#[cfg(test)] mod tests { … }` block blanked (its lines kept, so line numbers
/// stay true); any other `#[cfg(test)]` item is read like the rest.
fn without_tests_block(text: &str) -> String {
    let Some((at, close)) = tests_block(text) else { return text.to_owned() };
    let blanked: String = text[at..=close].chars().map(|c| if c == '\n' { '\n' } else { ' ' }).collect();
    format!("{}{}{}", &text[..at], blanked, &text[close + 1..])
}

/// Where the tests block starts (its `#[cfg(test)]`) and ends (its `}`), if there is one.
fn tests_block(text: &str) -> Option<(usize, usize)> {
    let at = tests_block_start(text)?;
    let open = at + text[at..].find('{').unwrap();
    Some((at, matching_brace(text, open).unwrap_or(text.len() - 1)))
}

/// Where `#[cfg(test)]` followed by `mod tests {` starts, if anywhere.
fn tests_block_start(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = text[from..].find("#[cfg(test)]").map(|i| i + from) {
        let rest = text[at + "#[cfg(test)]".len()..].trim_start();
        if rest.strip_prefix("mod tests").is_some_and(|r| r.trim_start().starts_with('{')) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The `}` that closes the `{` at `open`, skipping comments, strings and character literals.
fn matching_brace(text: &str, open: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let (mut i, mut depth) = (open, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => i = text[i..].find('\n').map_or(bytes.len(), |n| i + n),
            b'/' if bytes.get(i + 1) == Some(&b'*') => i = text[i..].find("*/").map_or(bytes.len(), |n| i + n + 1),
            b'r' if raw_string_end(text, i).is_some() => i = raw_string_end(text, i).unwrap_or(i),
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            // A character literal ('{', '\n', '\''), not a lifetime ('a).
            b'\'' if bytes.get(i + 1) == Some(&b'\\') => i += text[i + 3..].find('\'').map_or(0, |n| n + 3),
            b'\'' if bytes.get(i + 2) == Some(&b'\'') => i += 2,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Where the raw string `r"…"` or `r#"…"#` starting at `i` ends; `None` when `i` starts none.
fn raw_string_end(text: &str, i: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_') {
        return None;
    }
    let hashes = bytes[i + 1..].iter().take_while(|&&b| b == b'#').count();
    if bytes.get(i + 1 + hashes) != Some(&b'"') {
        return None;
    }
    let end = format!("\"{}", "#".repeat(hashes));
    let body = i + 2 + hashes;
    Some(text[body..].find(&end).map_or(text.len(), |n| body + n + end.len() - 1))
}

/// Every path that starts with `crate::` or `super::`, `{…}` groups expanded, with its line.
fn paths(text: &str) -> Vec<(usize, String)> {
    // Comments say nothing of imports (a `//` inside a string cuts a line short: no path is lost that matters).
    let code: Vec<&str> = text.lines().map(|line| line.split("//").next().unwrap()).collect();
    let mut out = Vec::new();
    for (n, line) in code.iter().enumerate() {
        let bytes = line.as_bytes();
        for start in ["crate::", "super::"] {
            let mut from = 0;
            while let Some(at) = line[from..].find(start).map(|i| i + from) {
                from = at + start.len();
                let joined = at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || matches!(bytes[at - 1], b'_' | b':'));
                if !joined {
                    let rest = code[n..].join("\n");
                    expand(path_at(&rest[at..]), &mut |path| out.push((n + 1, path)));
                }
            }
        }
    }
    out
}

/// The path at the start of `text`, with its `{…}` group (which may span lines).
fn path_at(text: &str) -> &str {
    let mut depth = 0;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return &text[..i],
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &text[..=i];
                }
            }
            c if depth == 0 && !(c.is_alphanumeric() || c == '_' || c == ':') => return &text[..i],
            _ => {}
        }
    }
    text
}

/// `a::{b, c::{d, e}, f as g}` → `a::b`, `a::c::d`, `a::c::e`, `a::f`.
fn expand(path: &str, each: &mut dyn FnMut(String)) {
    let path = path.trim();
    match path.find('{') {
        // `f as g`: the path is what comes before `as`.
        None => each(path.split_whitespace().next().unwrap_or_default().trim_end_matches("::").to_owned()),
        Some(open) => {
            let head: String = path[..open].chars().filter(|c| !c.is_whitespace()).collect();
            let group = &path[open + 1..path.rfind('}').unwrap_or(path.len())];
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars().chain([',']) {
                match c {
                    ',' if depth == 0 => {
                        if !item.trim().is_empty() {
                            expand(&format!("{head}{}", item.trim()), each);
                        }
                        item.clear();
                        continue;
                    }
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                item.push(c);
            }
        }
    }
}

/// What a path names: a module of `src/` (the longest prefix of it that is a file), or the crate
/// root itself (an item of `lib.rs`).
#[derive(Debug, PartialEq)]
enum Target {
    Module(Vec<String>),
    Root,
}

fn target(source: &Source, path: &str, modules: &BTreeSet<Vec<String>>) -> Target {
    let mut segments: Vec<&str> = path.split("::").collect();
    let mut base: Vec<String> = Vec::new();
    if segments[0] == "super" {
        // `super` of `a/b.rs` is `a`; of `a/mod.rs` (module `a`) it is the crate root.
        base = source.module[..source.module.len() - 1].to_vec();
        segments.remove(0);
        while segments.first() == Some(&"super") {
            base.pop();
            segments.remove(0);
        }
    } else {
        segments.remove(0);
    }
    let full: Vec<String> = base.into_iter().chain(segments.iter().map(|s| (*s).to_owned())).collect();
    let module = (1..=full.len()).rev().map(|k| full[..k].to_vec()).find(|prefix| modules.contains(prefix));
    module.map_or(Target::Root, Target::Module)
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

#[test]
fn modules_import_only_lower_layers() {
    let sources = sources();
    let modules: BTreeSet<Vec<String>> = sources.iter().map(|s| s.module.clone()).collect();
    let mut wrong = Vec::new();
    for top in modules.iter().filter(|m| m.len() == 1) {
        if layer_of(&top[0]).is_none() {
            wrong.push(format!("src/{} has no layer in tests/architecture.rs (and ARCHITECTURE.md)", top[0]));
        }
    }
    for source in &sources {
        let from = &source.module[0];
        for (line, path) in paths(&source.text) {
            let to = match target(source, &path, &modules) {
                Target::Module(to) => to,
                Target::Root => {
                    let at = format!("{}:{line}: `{path}`", source.file.display());
                    wrong.push(format!("{at}: {from} imports the crate root; lib.rs only wires, import the module"));
                    continue;
                }
            };
            let to = &to[0];
            if to == from {
                continue;
            }
            if let (Some(a), Some(b)) = (layer_of(from), layer_of(to))
                && b >= a
            {
                wrong.push(format!(
                    "{}:{line}: `{path}`: {from} (layer {a}) must not import {to} (layer {b})",
                    source.file.display()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers:\n{}", wrong.join("\n"));
}

#[test]
fn the_files_of_a_folder_import_each_other_one_way() {
    let sources = sources();
    let modules: BTreeSet<Vec<String>> = sources.iter().map(|s| s.module.clone()).collect();
    let folders: BTreeSet<Vec<String>> = sources.iter().filter(|s| s.is_mod_rs).map(|s| s.module.clone()).collect();
    let mut wrong = Vec::new();
    for folder in &folders {
        // The folder's own mod.rs is its root, as lib.rs is the crate's: it may reach every file.
        let child = |m: &[String]| {
            (m.len() > folder.len() && m[..folder.len()] == folder[..]).then(|| m[..=folder.len()].to_vec())
        };
        let mut edges: BTreeMap<Vec<String>, BTreeMap<Vec<String>, String>> = BTreeMap::new();
        for source in sources.iter().filter(|s| child(&s.module).is_some()) {
            let from = child(&source.module).unwrap();
            for (line, path) in paths(&source.text) {
                let Target::Module(to) = target(source, &path, &modules) else { continue };
                let Some(to) = child(&to) else { continue };
                if to != from {
                    let at = format!("{}:{line}: `{path}`", source.file.display());
                    edges.entry(from.clone()).or_default().entry(to).or_insert(at);
                }
            }
        }
        if let Some(cycle) = find_cycle(&edges) {
            let steps: Vec<&str> = cycle.iter().map(String::as_str).collect();
            wrong.push(format!("files of src/{} import in a circle:\n  {}", folder.join("/"), steps.join("\n  ")));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A circle of imports, each step as the import that makes it, if there is one.
fn find_cycle(edges: &BTreeMap<Vec<String>, BTreeMap<Vec<String>, String>>) -> Option<Vec<String>> {
    fn visit(
        node: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeMap<Vec<String>, String>>,
        path: &mut Vec<(Vec<String>, String)>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|(n, _)| n == node) {
            return Some(path[start..].iter().map(|(_, import)| import.clone()).collect());
        }
        if done.contains(node) {
            return None;
        }
        for (next, import) in edges.get(node).into_iter().flatten() {
            path.push((node.clone(), import.clone()));
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
            path.pop();
        }
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    edges.keys().find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

#[test]
fn no_file_is_longer_than_600_lines_before_its_tests() {
    let long: Vec<String> = sources()
        .iter()
        .filter(|s| s.lines > MAX_LINES)
        .map(|s| format!("{}: {} lines", s.file.display(), s.lines))
        .collect();
    assert!(long.is_empty(), "split these along their seams:\n{}", long.join("\n"));
}

/// ARCHITECTURE.md's layer table, lowest first: each row `| n | `a` `b` | why |`, under `## Layers`.
fn documented_layers() -> Vec<Vec<String>> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md")).unwrap();
    let section = doc.split("\n## Layers").nth(1).expect("ARCHITECTURE.md has a `## Layers` section");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            cells.get(1)?.parse::<usize>().ok()?;
            Some(cells[2].split('`').skip(1).step_by(2).map(str::to_owned).collect())
        })
        .collect()
}

#[test]
fn architecture_md_draws_these_layers() {
    let ours: Vec<Vec<String>> = LAYERS.iter().map(|l| l.iter().map(|m| (*m).to_owned()).collect()).collect();
    let documented = documented_layers();
    let mut wrong = Vec::new();
    for n in 0..ours.len().max(documented.len()) {
        let (a, b) = (ours.get(n), documented.get(n));
        if a != b {
            wrong.push(format!("ARCHITECTURE.md: layer {n}: the test has {a:?}, the document {b:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "the layer table in ARCHITECTURE.md is not tests/architecture.rs's LAYERS:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_tests_block_is_all_that_is_skipped() {
    let text = "use a;\n#[cfg(test)]\nfn helper() {}\nuse crate::b;\n#[cfg(test)]\nmod tests {\n    let c = '{';\n    \"}\";\n    use crate::hidden;\n}\nuse crate::after;\n";
    let kept = without_tests_block(text);
    assert_eq!(kept.lines().count(), text.lines().count());
    let found: Vec<(usize, String)> = paths(&kept);
    assert_eq!(found, [(4, "crate::b".to_owned()), (11, "crate::after".to_owned())]);
}

#[test]
fn the_reader_of_imports_reads_groups_and_super() {
    let mut found = Vec::new();
    expand("crate::a::{b, c::{d, e}, f as g}", &mut |p| found.push(p));
    assert_eq!(found, ["crate::a::b", "crate::a::c::d", "crate::a::c::e", "crate::a::f"]);
    let text = "use super::{x::Y,\n    z};\nlet v = crate::m::n(1); // crate::ignored::in_comment\n";
    let paths: Vec<(usize, String)> = paths(text);
    assert_eq!(paths, [(1, "super::x::Y".to_owned()), (1, "super::z".to_owned()), (3, "crate::m::n".to_owned())]);
}
