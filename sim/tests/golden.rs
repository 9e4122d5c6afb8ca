//! `vmsim ops` against golden outputs transcribed from the specification, and against malformed
//! input.
//!
//! `traces/example.*` is the example of `docs/trace-format.md`; `traces/gpuvm-examples/*` are the
//! worked examples E1-E14 and U1-U5 of `docs/semantics.md` section 8, generated from a hand
//! transcription of that section by `traces/gen-gpuvm-examples.py`; `traces/errors.*` covers every
//! rejection reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn vmsim(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write as _;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmsim"));
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("vmsim runs");
    let mut pipe = child.stdin.take().expect("stdin");
    pipe.write_all(stdin.unwrap_or("").as_bytes())
        .expect("write stdin");
    drop(pipe);
    child.wait_with_output().expect("vmsim finishes")
}

fn check_golden(trace: &Path) {
    let expected_path = trace.with_extension("expected");
    let expected = std::fs::read_to_string(&expected_path).expect("expected file");
    let out = vmsim(&["ops", trace.to_str().expect("utf-8 path")], None);
    assert!(
        out.status.success(),
        "{}: {}",
        trace.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        expected,
        "{}",
        trace.display()
    );
}

#[test]
fn format_example_byte_for_byte() {
    check_golden(&repo().join("traces/example.trace"));
}

#[test]
fn every_rejection_reason() {
    check_golden(&repo().join("traces/errors.trace"));
}

#[test]
fn agrees_with_every_gpuvm_semantics_example() {
    let dir = repo().join("traces/gpuvm-examples");
    let mut traces: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "trace"))
        .collect();
    traces.sort();
    assert_eq!(traces.len(), 19, "E1-E14 and U1-U5");
    for t in traces {
        check_golden(&t);
    }
}

#[test]
fn reads_standard_input() {
    let text = std::fs::read_to_string(repo().join("traces/example.trace")).expect("trace");
    let expected =
        std::fs::read_to_string(repo().join("traces/example.expected")).expect("expected");
    for args in [&["ops"][..], &["ops", "-"][..]] {
        let out = vmsim(args, Some(&text));
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    }
}

#[test]
fn malformed_input_names_the_line_and_never_panics() {
    let cases = [
        ("space 0 0x1000\nmap 0 0x1000 1\n", "line 2"),
        ("space 0 0x1000\nmap 0 0x1000 one 0\n", "line 2"),
        ("space 0 0\n", "VA space is empty"),
        ("space 0xffffffffffffffff 2\n", "overflows"),
        (
            "space 0 0x1000\nreserve 0x2000 0x10\n",
            "not inside the VA space",
        ),
        ("unmap 0 1\n", "line 1"),
        ("", "no `space` line"),
        ("space 0 0x1000\n\u{1F600}\n", "line 2"),
    ];
    for (text, needle) in cases {
        let out = vmsim(&["ops"], Some(text));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text:?} should fail");
        assert!(
            err.contains(needle),
            "{text:?}: stderr {err:?} lacks {needle:?}"
        );
        assert!(!err.contains("panicked"), "{text:?}: {err}");
        assert!(
            out.stdout.is_empty(),
            "nothing is printed for a malformed trace"
        );
    }
    let out = vmsim(&["ops", "/nonexistent/trace"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/trace"));
}

#[test]
fn bench_mode_prints_one_summary_line() {
    let path = repo().join("traces/example.trace");
    let out = vmsim(
        &[
            "ops",
            "--bench",
            "--bench-repeat",
            "3",
            path.to_str().expect("utf-8"),
        ],
        None,
    );
    assert!(out.status.success());
    let line = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.len(), 8, "{line}");
    assert_eq!(
        [fields[0], fields[2], fields[4], fields[6]],
        ["requests", "total_ns", "ns_per_request", "final_mappings"]
    );
    assert_eq!(fields[1], "3");
    assert_eq!(fields[7], "1");
    let total: u128 = fields[3].parse().expect("number");
    let per: u128 = fields[5].parse().expect("number");
    assert_eq!(per, total / 3);
    let out = vmsim(
        &["ops", "--bench-repeat", "0", path.to_str().expect("utf-8")],
        None,
    );
    assert!(!out.status.success(), "a repeat count of 0 is refused");
}
