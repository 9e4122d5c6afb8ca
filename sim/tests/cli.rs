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

fn scenario_file(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(name)
}

#[test]
fn a_dump_piped_into_replay_gives_the_built_in_report() {
    let dump = vmsim()
        .args(["scenario", "--dump", "--frames", "8"])
        .output()
        .expect("runs");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    assert!(dump.stdout.starts_with(b"# vmsim scenario --dump"));
    let mut child = vmsim()
        .args(["replay", "-", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawns");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(&dump.stdout).expect("feeds the dump");
    }
    let replayed = child.wait_with_output().expect("waits");
    assert!(replayed.status.success());
    let built_in = vmsim()
        .args(["--frames", "8", "--json"])
        .output()
        .expect("runs");
    let strip = |out: &[u8]| {
        let mut v: serde_json::Value = serde_json::from_slice(out).expect("JSON report");
        let o = v.as_object_mut().expect("an object");
        for k in ["timing", "source", "seed", "story"] {
            o.remove(k);
        }
        v
    };
    assert_eq!(strip(&built_in.stdout), strip(&replayed.stdout));
}

#[test]
fn replay_exit_codes_follow_the_hazards_and_errors_name_the_line() {
    let ok = vmsim()
        .arg("replay")
        .arg(scenario_file("basic.scn"))
        .output()
        .expect("runs");
    assert_eq!(ok.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("hazards: 0 -> OK"));
    let cycle = vmsim()
        .arg("replay")
        .arg(scenario_file("cycle.scn"))
        .output()
        .expect("runs");
    assert_eq!(cycle.status.code(), Some(1), "a hazard fails the replay");
    assert!(String::from_utf8_lossy(&cycle.stdout).contains("-> FAILED"));
    let dir = std::env::temp_dir().join(format!("vmsim-scn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bad = dir.join("bad.scn");
    std::fs::write(
        &bad,
        "vm a fifo\nbo b 1M huge\nbind-sync a {\n  map 0 1M c 0\n}\n",
    )
    .expect("write");
    let out = vmsim().arg("replay").arg(&bad).output().expect("runs");
    let _ = std::fs::remove_dir_all(&dir);
    assert_clean_failure(&out, "malformed scenario");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.scn: line 4: `c` is not a buffer object"),
        "{err}"
    );
    let missing = vmsim()
        .args(["replay", "/nonexistent/x.scn"])
        .output()
        .expect("runs");
    assert_clean_failure(&missing, "missing file");
}

#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_under_a_dump_or_a_replay_is_an_error_not_a_panic() {
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full")
    };
    let out = vmsim()
        .args(["scenario", "--dump", "--frames", "3"])
        .stdout(full())
        .output()
        .expect("runs");
    assert_clean_failure(&out, "dump to /dev/full");
    let out = vmsim()
        .args(["scenario", "--dump", "--frames", "3", "/dev/full"])
        .output()
        .expect("runs");
    assert_clean_failure(&out, "dump file /dev/full");
    assert!(String::from_utf8_lossy(&out.stderr).contains("/dev/full"));
    let out = vmsim()
        .arg("replay")
        .arg(scenario_file("basic.scn"))
        .stdout(full())
        .output()
        .expect("runs");
    assert_clean_failure(&out, "replay report to /dev/full");
}

#[cfg(unix)]
#[test]
fn a_closed_pipe_under_a_dump_is_an_error_not_a_panic() {
    let mut child = vmsim()
        .args(["scenario", "--dump", "--frames", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("waits");
    assert_clean_failure(&out, "closed pipe under a dump");
}

#[test]
fn the_scenario_subcommands_have_help() {
    for (sub, word) in [("replay", "Scenario file"), ("scenario", "--dump")] {
        let out = vmsim().args([sub, "--help"]).output().expect("runs");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(word), "{sub} --help: {text}");
    }
}
