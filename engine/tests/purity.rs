//! The engine is state and rules: no files, no sockets, no threads of its
//! own, no async runtime. Files, the network, the journal writer and the
//! runtime belong to the server and the journal crate, where they can fail,
//! block and be tested as such. This test reads every source file of the
//! engine and fails on any use of them, so that none creeps back in.

use std::path::{Path, PathBuf};

/// What the engine must not use, and why each is named as it is: a path
/// (`std::fs`), or a use-group member (`use std::{fs, ...}`) spelt out below.
const FORBIDDEN: [&str; 6] = [
    "std::fs",
    "std::net",
    "std::process",
    "thread::spawn",
    "thread::Builder",
    "tokio",
];

/// Modules of `std` that a grouped import (`use std::{fs, io}`) could name
/// without writing `std::fs`.
const FORBIDDEN_STD_MODULES: [&str; 3] = ["fs", "net", "process"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("engine/src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a source file without its comments (docs may say what the
/// engine does not do).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What `code` uses of the forbidden list, if anything.
fn violations(code: &str) -> Vec<String> {
    let mut found: Vec<String> = FORBIDDEN
        .iter()
        .filter(|f| code.contains(*f))
        .map(|f| f.to_string())
        .collect();
    // `use std::{fs, io::Write}` and the like.
    let mut rest = code;
    while let Some(at) = rest.find("std::{") {
        let group = &rest[at + "std::{".len()..];
        let group = &group[..group.find('}').unwrap_or(group.len())];
        for name in group
            .split(',')
            .map(|n| n.split("::").next().unwrap_or("").trim())
        {
            if FORBIDDEN_STD_MODULES.contains(&name) {
                found.push(format!("std::{{{name}}}"));
            }
        }
        rest = &rest[at + 1..];
    }
    found
}

#[test]
fn the_engine_uses_no_files_sockets_threads_or_runtime() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("lib.rs")) && files.len() > 10,
        "found the engine's sources: {files:?}"
    );
    let mut bad = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("a source file is readable");
        for v in violations(&code(&text)) {
            bad.push(format!("{}: {v}", file.display()));
        }
    }
    assert!(
        bad.is_empty(),
        "the engine must not do I/O or start threads:\n{}",
        bad.join("\n")
    );
}

/// The check itself catches each form it looks for (else the test above
/// could pass on a file that does I/O).
#[test]
fn the_check_catches_each_form() {
    for code_line in [
        "let t = std::fs::read(p);",
        "use std::net::TcpStream;",
        "std::process::exit(1);",
        "std::thread::spawn(|| {});",
        "let b = std::thread::Builder::new();",
        "use std::thread; thread::spawn(f);",
        "tokio::spawn(f);",
        "use std::{fs, io};",
        "use std::{io::Write, net::UdpSocket};",
    ] {
        assert!(!violations(code_line).is_empty(), "missed: {code_line}");
    }
    for fine in [
        "use std::{io, sync::Arc};",
        "std::thread::sleep(d);",
        "// std::fs in a comment",
    ] {
        assert!(violations(&code(fine)).is_empty(), "flagged: {fine}");
    }
}
