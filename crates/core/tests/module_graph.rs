//! `crates/core` stays a one-way graph: no module imports one that imports it back (directly
//! or through others). Read from the sources, so a new cycle fails here, not in review.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// Top-level module → the top-level modules its non-test code names as `crate::…`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![src.clone()];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let rel = p.strip_prefix(&src).unwrap();
        let top = rel
            .iter()
            .next()
            .unwrap()
            .to_string_lossy()
            .replace(".rs", "");
        if top == "lib" || p.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = fs::read_to_string(&p).unwrap();
        // Test modules may reach anywhere.
        let code = text.split("#[cfg(test)]").next().unwrap();
        let deps = graph.entry(top.clone()).or_default();
        for use_block in code.split("use crate::").skip(1) {
            let block = use_block.split(';').next().unwrap();
            let names: Vec<&str> = if let Some(inner) = block.strip_prefix('{') {
                // Only the first path segment of each top-level item counts.
                let mut depth = 0;
                let mut items = vec![String::new()];
                for ch in inner.chars() {
                    match ch {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => items.push(String::new()),
                        _ if depth == 0 => items.last_mut().unwrap().push(ch),
                        _ => {}
                    }
                }
                items
                    .iter()
                    .map(|i| i.trim().split("::").next().unwrap().trim().to_owned())
                    .map(|s| &*Box::leak(s.into_boxed_str()))
                    .collect()
            } else {
                vec![block.split("::").next().unwrap().trim()]
            };
            deps.extend(names.iter().map(|n| n.to_string()));
        }
        for (i, _) in code.match_indices("crate::") {
            let name: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            deps.insert(name);
        }
        // `Deps`, `Error`, … re-exported at the root stand for their modules.
        for (reexport, module) in [
            ("Deps", "deps"),
            ("Error", "error"),
            ("Result", "error"),
            ("InvalidInput", "input"),
        ] {
            if deps.remove(reexport) {
                deps.insert(module.to_owned());
            }
        }
        deps.retain(|d| !d.is_empty() && d != &top && d != "self");
    }
    graph
}

#[test]
fn core_modules_form_a_one_way_graph() {
    let graph = graph();
    assert!(graph.len() > 15, "found the modules: {graph:?}");
    for start in graph.keys() {
        // Depth-first search for a path back to `start`.
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((node, path)) = stack.pop() {
            for next in graph.get(&node).into_iter().flatten() {
                if next == start {
                    panic!("import cycle: {} -> {start}", path.join(" -> "));
                }
                if seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
}
