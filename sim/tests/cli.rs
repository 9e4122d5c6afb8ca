//! The `vmsim` binary's output paths: a closed pipe or a full disk while writing the report or
//! the SVG is an error message and exit code 1, never a panic; the SVG is well-formed XML with
//! its three views.

use std::process::{Command, Stdio};

fn vmsim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmsim"))
}

fn assert_clean_failure(out: &std::process::Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
    assert!(
        err.starts_with("vmsim: "),
        "{what}: an error message: {err}"
    );
    assert!(!err.contains("panicked"), "{what}: {err}");
}

#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_under_the_report_or_the_svg_is_an_error_not_a_panic() {
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full")
    };
    let out = vmsim()
        .args(["--frames", "5"])
        .stdout(full())
        .output()
        .expect("runs");
    assert_clean_failure(&out, "report to /dev/full");
    assert!(String::from_utf8_lossy(&out.stderr).contains("stdout"));
    let out = vmsim()
        .args(["--frames", "5", "--svg", "/dev/full"])
        .output()
        .expect("runs");
    assert_clean_failure(&out, "svg to /dev/full");
    assert!(String::from_utf8_lossy(&out.stderr).contains("/dev/full"));
}

#[cfg(unix)]
#[test]
fn a_closed_pipe_under_the_report_is_an_error_not_a_panic() {
    // The reading end closes before vmsim writes anything (it simulates first).
    let mut child = vmsim()
        .args(["--frames", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("waits");
    assert_clean_failure(&out, "closed pipe");
    assert!(String::from_utf8_lossy(&out.stderr).contains("stdout"));
}

#[test]
fn the_svg_is_well_formed_and_has_its_three_views() {
    let dir = std::env::temp_dir().join(format!("vmsim-svg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("run.svg");
    let out = vmsim()
        .args(["--frames", "12", "--json", "--svg"])
        .arg(&path)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&path).expect("svg written");
    let _ = std::fs::remove_dir_all(&dir);
    let doc = roxmltree::Document::parse(&text).expect("well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    let group = |id: &str| {
        doc.descendants()
            .find(|n| n.attribute("id") == Some(id))
            .unwrap_or_else(|| panic!("group {id}"))
    };
    let class_count = |n: roxmltree::Node<'_, '_>, c: &str| {
        n.descendants()
            .filter(|d| d.attribute("class") == Some(c))
            .count()
    };
    // Four VMs in the default scenario: a VA row and a page-table row each.
    assert_eq!(class_count(group("va-space"), "vm"), 4);
    assert_eq!(class_count(group("page-tables"), "vm-tables"), 4);
    let lanes = class_count(group("timeline"), "lane");
    assert!(lanes >= 3, "bind and GPU lanes: {lanes}");
    assert_eq!(class_count(group("timeline"), "fences"), 1);
    assert!(
        group("va-space")
            .descendants()
            .any(|n| n.has_tag_name("rect")
                && n.attribute("fill").is_some_and(|f| f.starts_with("hsl("))),
        "mappings drawn in object colours"
    );
}
