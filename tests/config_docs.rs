//! The configuration the documents show is the configuration the program takes: every ```toml
//! block of README.md and the shipped examples/sipsockd.toml load; the example gives every key,
//! each at its default. The keys and sections are asked of the program itself (the refusal of an
//! unknown key lists the known ones), so a key added to the code and not to the example fails here.

use std::collections::BTreeSet;
use std::path::Path;
use supervisor::config::{parse, Config, ConfigError};

fn read(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The ```toml blocks of a Markdown text, with the line each starts on.
fn toml_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (n, line) in markdown.lines().enumerate() {
        match &mut open {
            None if line.trim_start().starts_with("```toml") => open = Some((n + 1, String::new())),
            None => {}
            Some(_) if line.trim_start().starts_with("```") => blocks.extend(open.take()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    assert!(open.is_none(), "a ```toml block is not closed");
    blocks
}

#[test]
fn every_toml_block_of_the_readme_loads() {
    let blocks = toml_blocks(&read("README.md"));
    assert!(!blocks.is_empty(), "README.md has no ```toml block");
    for (line, text) in blocks {
        if let Err(e) = parse(&text, &format!("README.md block at line {line}")) {
            panic!("{e}\n{text}");
        }
    }
}

#[test]
fn the_example_config_loads_and_gives_the_defaults() {
    let text = read("examples/sipsockd.toml");
    let config = parse(&text, "examples/sipsockd.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config, Config::default());
}

/// The comma-separated list of known names in the refusal of `probe`.
fn known(probe: &str) -> Vec<String> {
    let list = match parse(probe, "probe") {
        Err(ConfigError::UnknownSection { known, .. } | ConfigError::UnknownKey { known, .. }) => {
            known
        }
        other => panic!("{probe:?} was not refused as unknown: {other:?}"),
    };
    list.split(", ").map(str::to_string).collect()
}

#[test]
fn the_example_config_lists_every_key() {
    // (section, key) set in the example, commented out or not; tls.tag.<TAG> as tls.tag.*.
    let mut given = BTreeSet::new();
    let mut section = String::new();
    for line in read("examples/sipsockd.toml").lines() {
        let line = line.strip_prefix("# ").unwrap_or(line);
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            section = match name.strip_prefix("tls.tag.") {
                Some(_) => "tls.tag.*".into(),
                None => name.into(),
            };
        } else if let Some((key, _)) = line.split_once(" = ") {
            if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                given.insert((section.clone(), key.to_string()));
            }
        }
    }
    let sections = known("[zz_not_a_section]\n");
    assert!(sections.len() >= 7, "{sections:?}");
    let mut wanted = Vec::new();
    for s in &sections {
        for key in known(&format!("[{s}]\nzz_not_a_key = 1\n")) {
            if (s.as_str(), key.as_str()) == ("tls", "tag") {
                for key in known("[tls.tag.x]\nzz_not_a_key = 1\n") {
                    wanted.push(("tls.tag.*".to_string(), key));
                }
            } else {
                wanted.push((s.clone(), key));
            }
        }
    }
    assert!(wanted.len() > 30, "{wanted:?}");
    let missing: Vec<_> = wanted.iter().filter(|k| !given.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "examples/sipsockd.toml lacks {missing:?}"
    );
}
