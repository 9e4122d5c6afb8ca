//! The body of the `trace_parser` fuzz target: arbitrary bytes into `sim`'s trace-format v1
//! parser (`sim::trace::parse`, the format of `docs/trace-format.md`), which must return a trace
//! or an error naming a real line, never panic.
//!
//! Checked per input (the input is decoded lossily as UTF-8, so every byte string is a text):
//!
//! * an error names line 0 (the whole file: no `space` line) or a line the text has, and its
//!   message is not empty;
//! * a parsed trace has at most one request per line; printed back in the format (decimal or
//!   hex, chosen by the input's first byte) it parses to the same trace;
//! * a parsed trace of at most [`MAX_REPLAY`] requests replays through `sim::ops` (`vmsim ops`)
//!   without panicking, and its output is the same with and without object links (which is
//!   what the replay documents), except for one known, reported difference (see `run`).
//!
//! The `fuzz/` crate includes this file by path.

use std::fmt::Write as _;

use sim::ops::{replay_with, Links};
use sim::trace::{parse, Request, Trace};

/// Longest parsed trace that is also replayed.
pub const MAX_REPLAY: usize = 32;

/// Prints `t` in the trace format, numbers in hex when `hex`.
#[must_use]
pub fn render(t: &Trace, hex: bool) -> String {
    let n = |v: u64| {
        if hex {
            format!("{v:#x}")
        } else {
            v.to_string()
        }
    };
    let mut out = String::new();
    let _ = writeln!(out, "space {} {}", n(t.space.0), n(t.space.1));
    if let Some((a, s)) = t.reserve {
        let _ = writeln!(out, "reserve {} {}", n(a), n(s));
    }
    if t.merge {
        let _ = writeln!(out, "merge on");
    }
    for r in &t.requests {
        let _ = match *r {
            Request::Map {
                addr,
                size,
                obj,
                offset,
            } => writeln!(out, "map {} {} {} {}", n(addr), n(size), n(obj), n(offset)),
            Request::Unmap { addr, size } => writeln!(out, "unmap {} {}", n(addr), n(size)),
            Request::UnmapObject { obj } => writeln!(out, "unmap-obj {}", n(obj.get())),
            Request::Prefetch { addr, size } => {
                writeln!(out, "prefetch {} {}", n(addr), n(size))
            }
            Request::Split { addr, size } => writeln!(out, "split {} {}", n(addr), n(size)),
            Request::MapRepeat {
                addr,
                size,
                obj,
                offset,
                period,
            } => writeln!(
                out,
                "map-repeat {} {} {} {} {}",
                n(addr),
                n(size),
                n(obj),
                n(offset),
                n(period.period())
            ),
        };
    }
    out
}

/// Runs one fuzz input.
///
/// # Panics
///
/// On any violated property (see the module docs).
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let lines = text.lines().count();
    match parse(&text) {
        Err(e) => {
            assert!(
                e.line <= lines,
                "error on line {} of a {lines}-line text",
                e.line
            );
            assert!(!e.msg.is_empty(), "an empty error message");
            let shown = e.to_string();
            assert!(shown.starts_with("line "), "{shown}");
        }
        Ok(t) => {
            assert!(t.requests.len() <= lines, "more requests than lines");
            let hex = data.first().is_some_and(|b| b & 1 != 0);
            let again = parse(&render(&t, hex));
            assert_eq!(
                again.as_ref(),
                Ok(&t),
                "printed back, the trace parses the same"
            );
            if t.requests.len() <= MAX_REPLAY {
                let on = replay_with(&t, Links::On);
                let off = replay_with(&t, Links::Off);
                match (on, off) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b, "replay output depends on links"),
                    (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                    (a, b) => panic!("replay with links {a:?}, without {b:?}"),
                }
            }
        }
    }
}

/// The committed seed corpus: the committed traces of `traces/`, then malformed variants.
#[must_use]
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = vec![
        (
            "example".into(),
            include_bytes!("../../traces/example.trace").to_vec(),
        ),
        (
            "errors".into(),
            include_bytes!("../../traces/errors.trace").to_vec(),
        ),
    ];
    let cases: [(&str, &str); 22] = [
        ("empty", ""),
        ("comment_only", "# nothing\n"),
        ("no_space", "map 0 1 1 0\n"),
        ("space_only", "space 0 0x100000\n"),
        ("space_twice", "space 0 10\nspace 0 10\n"),
        ("reserve_late", "space 0 10\nmap 0 1 1 0\nreserve 0 1\n"),
        ("reserve_twice", "space 0 10\nreserve 0 1\nreserve 0 1\n"),
        ("few_fields", "space 0 10\nmap 0 1 1\n"),
        ("many_fields", "space 0 10\nunmap 0 1 2\n"),
        ("bad_hex", "space 0 10\nmap 0 0x 1 0\n"),
        ("bad_digit", "space 0 10\nmap 0 zz 1 0\n"),
        ("too_big", "space 0 10\nmap 0 99999999999999999999 1 0\n"),
        ("upper_hex", "space 0X0 0XFFFF\nmap 0X10 0X20 1 0\n"),
        ("unknown", "space 0 10\nfrob 1\n"),
        ("negative", "-1\n"),
        ("crlf", "space 0 0x10000\r\nmap 0x1000 0x1000 1 0\r\n"),
        ("tabs_and_tail", "space\t0\t0x10000 # c\n\tunmap 0 0x1000#x\n"),
        ("no_newline", "space 0 0x10000\nmap 0x1000 0x1000 1 0"),
        (
            "wraps",
            "space 0xfffffffffffff000 0x1000\nmap 0xfffffffffffff000 0x1000 0 0\n",
        ),
        (
            "huge_space",
            "space 0 0xffffffffffffffff\nreserve 0x1000 0x1000\nmap 0 0x1000 1 0\nunmap 0 0xffffffffffffffff\n",
        ),
        (
            "overlaps",
            "space 0x1000 0x100000\nmap 0x1000 0x8000 1 0\nmap 0x3000 0x2000 2 0x10\nmap 0x2000 0x1000 1 0x1000\nunmap 0x4000 0x3000\n",
        ),
        ("invalid_utf8", "space 0 10\nmap \u{fffd} 1 1 0\n"),
    ];
    for (name, text) in cases {
        out.push((name.into(), text.as_bytes().to_vec()));
    }
    // Raw invalid UTF-8 (decoded lossily).
    out.push((
        "raw_bytes".into(),
        b"space 0 0x10000\nmap 0x1000 \xff\xfe 1 0\n".to_vec(),
    ));
    out
}
