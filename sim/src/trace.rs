//! Trace format v1 (`docs/trace-format.md` in the repository): parsing a text trace into requests.

use std::fmt;

/// One request of a trace, with the line it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// `map <addr> <size> <obj> <offset>`; `obj` 0 means no object.
    Map {
        /// First address.
        addr: u64,
        /// Size.
        size: u64,
        /// Object id, 0 for none.
        obj: u64,
        /// Offset in the object.
        offset: u64,
    },
    /// `unmap <addr> <size>`.
    Unmap {
        /// First address.
        addr: u64,
        /// Size.
        size: u64,
    },
    /// Extension `unmap-obj <obj>`: every mapping of a (non-zero) object, in address order.
    UnmapObject {
        /// The object.
        obj: gpuva::ObjId,
    },
    /// Extension `prefetch <addr> <size>`.
    Prefetch {
        /// First address.
        addr: u64,
        /// Size.
        size: u64,
    },
    /// Extension `split <addr> <size>`: attribute split at the edges of the range.
    Split {
        /// First address.
        addr: u64,
        /// Size.
        size: u64,
    },
    /// Extension `map-repeat <addr> <size> <obj> <offset> <period>`: a repeat mapping of the
    /// window of `period` bytes containing `offset`, from phase `offset mod period`.
    MapRepeat {
        /// First address.
        addr: u64,
        /// Size.
        size: u64,
        /// Object id, 0 for none (which gpuva refuses for a repeat).
        obj: u64,
        /// Offset in the object of the first address: window start plus phase.
        offset: u64,
        /// The window's size.
        period: gpuva::Repeat,
    },
}

/// A parsed trace: the VA space geometry and the requests in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    /// `space <start> <size>`.
    pub space: (u64, u64),
    /// `reserve <addr> <size>`, if present.
    pub reserve: Option<(u64, u64)>,
    /// The requests, in order.
    pub requests: Vec<Request>,
    /// Extension `merge on`: the VA space's merge policy (off unless the line is present).
    pub merge: bool,
}

/// A malformed trace: what is wrong and on which line (1-based).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {msg}")]
pub struct ParseError {
    /// 1-based line number (0 when the problem is the whole file, e.g. it is empty).
    pub line: usize,
    /// What is wrong.
    pub msg: String,
}

fn err(line: usize, msg: impl fmt::Display) -> ParseError {
    ParseError {
        line,
        msg: msg.to_string(),
    }
}

/// Parses a number: decimal or `0x`-prefixed hexadecimal.
fn number(line: usize, what: &str, tok: &str) -> Result<u64, ParseError> {
    let parsed = match tok.strip_prefix("0x").or_else(|| tok.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => tok.parse::<u64>(),
    };
    parsed.map_err(|e| err(line, format_args!("bad {what} `{tok}`: {e}")))
}

/// Parses a whole trace.
///
/// # Errors
///
/// [`ParseError`] for the first malformed line: unknown keyword, wrong number of fields, a number
/// that is not decimal or `0x` hex or does not fit in 64 bits, a missing or misplaced `space` line,
/// a misplaced `reserve` line.
pub fn parse(text: &str) -> Result<Trace, ParseError> {
    let mut space = None;
    let mut reserve = None;
    let mut requests = Vec::new();
    let mut merge = false;
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let content = raw.split('#').next().unwrap_or("");
        let toks: Vec<&str> = content.split_whitespace().collect();
        let Some((&kw, args)) = toks.split_first() else {
            continue;
        };
        let want = |n: usize, usage: &str| {
            if args.len() == n {
                Ok(())
            } else {
                Err(err(line, format_args!("`{kw}` takes {n} fields: {usage}")))
            }
        };
        match kw {
            "space" => {
                want(2, "space <start> <size>")?;
                if space.is_some() {
                    return Err(err(line, "a second `space` line"));
                }
                space = Some((
                    number(line, "start", args[0])?,
                    number(line, "size", args[1])?,
                ));
            }
            "reserve" => {
                want(2, "reserve <addr> <size>")?;
                if space.is_none() || reserve.is_some() || !requests.is_empty() {
                    return Err(err(line, "`reserve` must come right after `space`, once"));
                }
                reserve = Some((
                    number(line, "address", args[0])?,
                    number(line, "size", args[1])?,
                ));
            }
            "map" => {
                want(4, "map <addr> <size> <obj> <offset>")?;
                if space.is_none() {
                    return Err(err(line, "the first request must be `space`"));
                }
                requests.push(Request::Map {
                    addr: number(line, "address", args[0])?,
                    size: number(line, "size", args[1])?,
                    obj: number(line, "object", args[2])?,
                    offset: number(line, "offset", args[3])?,
                });
            }
            "unmap" => {
                want(2, "unmap <addr> <size>")?;
                if space.is_none() {
                    return Err(err(line, "the first request must be `space`"));
                }
                requests.push(Request::Unmap {
                    addr: number(line, "address", args[0])?,
                    size: number(line, "size", args[1])?,
                });
            }
            "map-repeat" => {
                want(5, "map-repeat <addr> <size> <obj> <offset> <period>")?;
                if space.is_none() {
                    return Err(err(line, "the first request must be `space`"));
                }
                let period = number(line, "period", args[4])?;
                let period = gpuva::Repeat::new(period).ok_or_else(|| {
                    err(
                        line,
                        "the `map-repeat` period must be a power of two up to 2^62",
                    )
                })?;
                requests.push(Request::MapRepeat {
                    addr: number(line, "address", args[0])?,
                    size: number(line, "size", args[1])?,
                    obj: number(line, "object", args[2])?,
                    offset: number(line, "offset", args[3])?,
                    period,
                });
            }
            "merge" => {
                want(1, "merge on")?;
                if args[0] != "on" {
                    return Err(err(line, "`merge` takes `on`"));
                }
                if space.is_none() || merge || !requests.is_empty() {
                    return Err(err(
                        line,
                        "`merge on` must come after `space`, before the first request, once",
                    ));
                }
                merge = true;
            }
            "unmap-obj" => {
                want(1, "unmap-obj <obj>")?;
                if space.is_none() {
                    return Err(err(line, "the first request must be `space`"));
                }
                let obj = number(line, "object", args[0])?;
                let obj = gpuva::ObjId::new(obj)
                    .ok_or_else(|| err(line, "`unmap-obj` needs an object"))?;
                requests.push(Request::UnmapObject { obj });
            }
            "prefetch" | "split" => {
                want(2, "<prefetch|split> <addr> <size>")?;
                if space.is_none() {
                    return Err(err(line, "the first request must be `space`"));
                }
                let addr = number(line, "address", args[0])?;
                let size = number(line, "size", args[1])?;
                requests.push(if kw == "split" {
                    Request::Split { addr, size }
                } else {
                    Request::Prefetch { addr, size }
                });
            }
            other => return Err(err(line, format_args!("unknown request `{other}`"))),
        }
    }
    let space = space.ok_or_else(|| err(0, "no `space` line"))?;
    Ok(Trace {
        space,
        reserve,
        requests,
        merge,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_format_example() {
        let t =
            parse("space 0 0x100000\nmap 0x1000 0x4000 1 0\n# c\n\nunmap 0x1000 0x2000 # tail\n")
                .unwrap();
        assert_eq!(t.space, (0, 0x100000));
        assert_eq!(t.requests.len(), 2);
        assert_eq!(
            t.requests[1],
            Request::Unmap {
                addr: 0x1000,
                size: 0x2000
            }
        );
    }

    #[test]
    fn malformed_lines_name_their_line() {
        let cases = [
            ("map 0 1 1 0\n", 1, "first request must be `space`"),
            ("space 0 10\nmap 0 1 1\n", 2, "takes 4 fields"),
            ("space 0 10\nmap 0 zz 1 0\n", 2, "bad size `zz`"),
            ("space 0 10\nmap 0 0x 1 0\n", 2, "bad size `0x`"),
            (
                "space 0 10\nmap 0 99999999999999999999 1 0\n",
                2,
                "bad size",
            ),
            ("space 0 10\nfrob 1\n", 2, "unknown request `frob`"),
            ("space 0 10\nspace 0 10\n", 2, "second `space`"),
            (
                "space 0 10\nmap 0 1 1 0\nreserve 0 1\n",
                3,
                "right after `space`",
            ),
            ("space 0 10\nunmap 0\n", 2, "takes 2 fields"),
            ("-1\n", 1, "unknown request"),
            ("space 0 10\nunmap-obj 0\n", 2, "needs an object"),
            (
                "space 0 10\nmap 0 1 1 0\nmerge on\n",
                3,
                "before the first request",
            ),
            ("space 0 10\nmerge off\n", 2, "takes `on`"),
            ("space 0 10\nmap-repeat 0 1 1 0\n", 2, "takes 5 fields"),
            ("space 0 10\nmap-repeat 0 1 1 0 3\n", 2, "power of two"),
            ("space 0 10\nmap-repeat 0 1 1 0 0\n", 2, "power of two"),
            ("space 0 10\nsplit 0\n", 2, "takes 2 fields"),
        ];
        for (text, line, needle) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}");
            assert!(e.to_string().contains(needle), "{text:?}: {e}");
        }
        assert_eq!(parse("# nothing\n").unwrap_err().line, 0);
    }
}
