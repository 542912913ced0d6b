//! The crate's top-level modules import each other without cycles (issue 9): each is
//! a file or folder under `src/`, and an import is a `crate::<module>` path outside
//! comments. A cycle fails with the modules on it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn sources(path: &Path, out: &mut Vec<std::path::PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            sources(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        let mut files = Vec::new();
        sources(&path, &mut files);
        let mut imports = BTreeSet::new();
        for file in files {
            for line in std::fs::read_to_string(file).unwrap().lines() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                for (index, _) in line.match_indices("crate::") {
                    let rest = &line[index + "crate::".len()..];
                    let module: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if !module.is_empty() && module != name {
                        imports.insert(module);
                    }
                }
            }
        }
        graph.insert(name, imports);
    }
    graph
}

#[test]
fn top_level_modules_have_no_import_cycles() {
    let graph = graph();
    assert!(graph.len() >= 20, "found only {:?}", graph.keys());
    // Depth-first search from every module for a path back to itself.
    let mut cycles = Vec::new();
    for start in graph.keys() {
        let mut stack = vec![vec![start.clone()]];
        while let Some(path) = stack.pop() {
            let last = path.last().unwrap();
            for next in graph.get(last).into_iter().flatten() {
                if next == start {
                    cycles.push(path.join(" -> "));
                } else if !path.contains(next) {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    stack.push(longer);
                }
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}
