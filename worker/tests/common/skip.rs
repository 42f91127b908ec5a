//! How a test that cannot run its peer (a tool, a database server, IPv6, root) says so: one copy,
//! included with `#[path]` by every test crate of the workspace.
//!
//! Under `CI=true` the test fails: CI has every peer. Elsewhere the test is recorded as skipped,
//! a line `test<TAB>reason` appended to the file `SIPSOCKD_SKIP_FILE` names (`scripts/test.sh`
//! sets it and lists the skipped tests at the end), plus `SKIPPED: ...` on stderr; the caller
//! then returns. A skip is never silent: nextest hides a passing test's output, the file is not.

/// Fail under `CI=true`, else record `test` as skipped for `reason`. The caller returns next.
pub fn skip(test: &str, reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} cannot run: {reason} (CI=true: a missing peer is a failure)");
    }
    let reason = reason.replace(['\t', '\n', '\r'], " ");
    if let Some(file) = std::env::var_os("SIPSOCKD_SKIP_FILE") {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .and_then(|mut f| f.write_all(format!("{test}\t{reason}\n").as_bytes()))
            .unwrap_or_else(|e| panic!("{test}: cannot record the skip in {file:?}: {e}"));
    }
    eprintln!("SKIPPED: {test}: {reason}");
}
