//! docs/clients/rust.md shows the gateway example verbatim: the code block
//! after its marker line must be client/examples/gateway.rs byte for byte,
//! so that the code readers copy is the code the test suite runs (the
//! server's tests run it against a real creditd).

use std::path::Path;

const MARKER: &str = "<!-- client/examples/gateway.rs, verbatim -->";

/// The body of the first fenced block after the line `marker`.
fn block_after(doc: &str, marker: &str) -> Option<String> {
    let mut lines = doc.lines().skip_while(|l| l.trim() != marker).skip(1);
    lines.find(|l| l.starts_with("```"))?;
    let mut body = String::new();
    for line in lines {
        if line.starts_with("```") {
            return Some(body);
        }
        body.push_str(line);
        body.push('\n');
    }
    None
}

#[test]
fn the_gateway_in_the_docs_is_the_example_that_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("../docs/clients/rust.md")).expect("the doc");
    let example = std::fs::read_to_string(root.join("examples/gateway.rs")).expect("the example");
    let shown = block_after(&doc, MARKER)
        .unwrap_or_else(|| panic!("docs/clients/rust.md: no code block after {MARKER}"));
    if shown != example {
        let line = shown
            .lines()
            .zip(example.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| shown.lines().count().min(example.lines().count()));
        panic!(
            "docs/clients/rust.md shows another gateway than client/examples/gateway.rs \
             (first difference at line {} of the example): copy the file into the doc",
            line + 1
        );
    }
}

#[test]
fn block_after_finds_the_fenced_block() {
    let doc = "intro\n```rust\nnot this\n```\n<!-- m -->\n\n```rust\nfn a() {}\n\nfn b() {}\n```\n";
    assert_eq!(
        block_after(doc, "<!-- m -->").as_deref(),
        Some("fn a() {}\n\nfn b() {}\n")
    );
    assert_eq!(block_after(doc, "<!-- other -->"), None);
    assert_eq!(block_after("<!-- m -->\n```rust\nopen", "<!-- m -->"), None);
}
