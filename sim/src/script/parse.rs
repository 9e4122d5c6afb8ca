//! The scenario-file parser: text to [`Script`], or the first error with its line.

use std::collections::HashMap;

use vmbind::queue::Policy;
use vmbind::MapFlags;

use super::{Cmd, FenceRef, Names, Op, Script, Setup, TimeoutKind};
use crate::usq::{Cond, SyncOp, UserCmd};
use crate::world::{Access, BindKind, Contiguity};

/// Most physical memory a script may ask for (MiB).
pub const MAX_MEMORY_MIB: u64 = 16 << 10;
/// Most address-space slots.
pub const MAX_SLOTS: usize = 64;
/// Most bind queues per VM.
pub const MAX_QUEUES: usize = 16;
/// Largest user-queue ring.
pub const MAX_RING: usize = 4096;
/// Longest duration (one simulated hour, in µs).
pub const MAX_DURATION_US: u64 = 3_600_000_000;
/// Most steps one `step` line may ask for.
pub const MAX_STEP_COUNT: u64 = 1_000_000;
/// Highest GPU address (the VMs span 47 bits; anything up to 2^56 is accepted and faults).
pub const MAX_VA: u64 = 1 << 56;

/// What is wrong with a line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    /// Not a command (or not an item of the open block).
    #[error("unknown command `{0}`")]
    Unknown(String),
    /// Wrong fields.
    #[error("usage: {0}")]
    Usage(&'static str),
    /// A number that does not parse or is out of its range.
    #[error("bad {what} `{tok}`: {why}")]
    Number {
        /// Which field.
        what: &'static str,
        /// The text.
        tok: String,
        /// Why.
        why: String,
    },
    /// A name used before it was defined, or defined as something else.
    #[error("`{name}` is not a {want}")]
    Undefined {
        /// The name.
        name: String,
        /// What the command needs there.
        want: &'static str,
    },
    /// A name defined twice.
    #[error("`{0}` is already defined")]
    Duplicate(String),
    /// Not a valid name (letters, digits, `_`, `-`, `.`, starting with a letter or `_`).
    #[error("bad name `{0}`")]
    BadName(String),
    /// A timeline point nothing installs before this line.
    #[error("no fence is installed at {0}@{1} before this line")]
    NoPoint(u32, u64),
    /// `signal` on a fence that is not a host fence.
    #[error("`signal` takes a host fence (from `host-fence`); {0} is not one")]
    NotHost(String),
    /// `memory` or `slots` after other commands, or twice.
    #[error("`{0}` must come before every other command, once")]
    Misplaced(&'static str),
    /// An item line outside a block, or `}` without one.
    #[error("`{0}` outside a block")]
    OutsideBlock(String),
    /// A block that is never closed (the line is the block's first).
    #[error("block not closed with `}}`")]
    Unclosed,
    /// A queue index the VM does not have.
    #[error("VM `{vm}` has {queues} bind queue(s); queue {queue} does not exist")]
    NoQueue {
        /// The VM.
        vm: String,
        /// Its queues.
        queues: usize,
        /// The one asked for.
        queue: usize,
    },
}

/// A malformed scenario file: what is wrong and on which line (1-based).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub kind: ParseErrorKind,
}

type R<T> = Result<T, ParseErrorKind>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sym {
    Vm(usize),
    Gpu(usize),
    Bo(usize),
    Native(usize),
    Uq(usize),
    Fence(usize),
}

/// What a fence name or point was made by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Maker {
    Host,
    Other,
}

#[derive(Default)]
struct Parser {
    names: Names,
    syms: HashMap<String, Sym>,
    fence_maker: Vec<Maker>,
    points: HashMap<(u32, u64), Maker>,
}

/// Parses a number: decimal or `0x` hex, optionally followed by `K`, `M`, `G` or `T` (powers
/// of 1024).
fn number(what: &'static str, tok: &str) -> R<u64> {
    let bad = |why: String| ParseErrorKind::Number {
        what,
        tok: tok.to_owned(),
        why,
    };
    let (digits, shift) = match tok.as_bytes().last() {
        Some(b'K') => (&tok[..tok.len() - 1], 10),
        Some(b'M') => (&tok[..tok.len() - 1], 20),
        Some(b'G') => (&tok[..tok.len() - 1], 30),
        Some(b'T') => (&tok[..tok.len() - 1], 40),
        _ => (tok, 0),
    };
    let v = match digits.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => digits.parse::<u64>(),
    }
    .map_err(|e| bad(e.to_string()))?;
    v.checked_mul(1 << shift)
        .ok_or_else(|| bad("does not fit in 64 bits".into()))
}

fn ranged(what: &'static str, tok: &str, lo: u64, hi: u64) -> R<u64> {
    let v = number(what, tok)?;
    if v < lo || v > hi {
        return Err(ParseErrorKind::Number {
            what,
            tok: tok.to_owned(),
            why: format!("must be in {lo}..={hi}"),
        });
    }
    Ok(v)
}

fn index(what: &'static str, tok: &str, lo: usize, hi: usize) -> R<usize> {
    let v = ranged(what, tok, lo as u64, hi as u64)?;
    usize::try_from(v).map_err(|e| ParseErrorKind::Number {
        what,
        tok: tok.to_owned(),
        why: e.to_string(),
    })
}

/// A duration: a number with `us`, `ms` or `s` (a bare number is µs), at most an hour.
fn duration(what: &'static str, tok: &str) -> R<u64> {
    let (digits, mul) = if let Some(d) = tok.strip_suffix("us") {
        (d, 1)
    } else if let Some(d) = tok.strip_suffix("ms") {
        (d, 1000)
    } else if let Some(d) = tok.strip_suffix('s') {
        (d, 1_000_000)
    } else {
        (tok, 1)
    };
    let bad = |why: String| ParseErrorKind::Number {
        what,
        tok: tok.to_owned(),
        why,
    };
    let v = number(what, digits)?
        .checked_mul(mul)
        .ok_or_else(|| bad("does not fit in 64 bits".into()))?;
    if v > MAX_DURATION_US {
        return Err(bad("longer than an hour".into()));
    }
    Ok(v)
}

fn va(what: &'static str, tok: &str) -> R<u64> {
    ranged(what, tok, 0, MAX_VA)
}

fn errno(tok: &str) -> R<i32> {
    tok.parse::<i32>().map_err(|e| ParseErrorKind::Number {
        what: "error code",
        tok: tok.to_owned(),
        why: e.to_string(),
    })
}

fn contiguity(tok: &str) -> R<Contiguity> {
    match tok {
        "huge" => Ok(Contiguity::Huge),
        "tiles" => Ok(Contiguity::Tiles),
        "scattered" => Ok(Contiguity::Scattered),
        _ => Err(ParseErrorKind::Usage(
            "contiguity is huge, tiles or scattered",
        )),
    }
}

fn kind(tok: &str) -> R<BindKind> {
    match tok {
        "sparse" => Ok(BindKind::Sparse),
        "churn" => Ok(BindKind::Churn),
        "blocked" => Ok(BindKind::Blocked),
        "evict" => Ok(BindKind::Evict),
        "revalidate" => Ok(BindKind::Revalidate),
        _ => Err(ParseErrorKind::Usage(
            "kind is sparse, churn, blocked, evict or revalidate",
        )),
    }
}

fn cond(op: &str, v: &str) -> R<Cond> {
    let v = number("value", v)?;
    match op {
        "gt" => Ok(Cond::Gt(v)),
        "le" => Ok(Cond::Le(v)),
        _ => Err(ParseErrorKind::Usage(
            "a condition is gt <value> or le <value>",
        )),
    }
}

fn sync_op(op: &str, v: &str) -> R<SyncOp> {
    let v = number("value", v)?;
    match op {
        "set" => Ok(SyncOp::Set(v)),
        "add" => Ok(SyncOp::Add(v)),
        _ => Err(ParseErrorKind::Usage(
            "an update is set <value> or add <value>",
        )),
    }
}

fn point(tok: &str) -> R<Option<(u32, u64)>> {
    let Some((h, p)) = tok.split_once('@') else {
        return Ok(None);
    };
    let h = ranged("syncobj handle", h, 0, u64::from(u32::MAX))?;
    let h = u32::try_from(h).unwrap_or(u32::MAX);
    Ok(Some((h, number("timeline point", p)?)))
}

fn valid_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || matches!(x, '_' | '-' | '.'))
}

/// Splits `key=value` options off the arguments.
struct Opts<'a> {
    pos: Vec<&'a str>,
    kv: Vec<(&'a str, &'a str)>,
}

impl<'a> Opts<'a> {
    fn new(args: &[&'a str], keys: &[&str], usage: &'static str) -> R<Self> {
        let mut pos = Vec::new();
        let mut kv: Vec<(&str, &str)> = Vec::new();
        for a in args {
            match a.split_once('=') {
                Some((k, v)) if keys.contains(&k) && !kv.iter().any(|(q, _)| *q == k) => {
                    kv.push((k, v));
                }
                Some(_) => return Err(ParseErrorKind::Usage(usage)),
                None => pos.push(*a),
            }
        }
        Ok(Self { pos, kv })
    }
    fn get(&self, k: &str) -> Option<&'a str> {
        self.kv.iter().find(|(q, _)| *q == k).map(|(_, v)| *v)
    }
}

impl Parser {
    fn define(&mut self, name: &str, sym: Sym) -> R<()> {
        if !valid_name(name) {
            return Err(ParseErrorKind::BadName(name.to_owned()));
        }
        match self.syms.get(name) {
            Some(Sym::Fence(_)) if matches!(sym, Sym::Fence(_)) => {}
            Some(_) => return Err(ParseErrorKind::Duplicate(name.to_owned())),
            None => {}
        }
        self.syms.insert(name.to_owned(), sym);
        Ok(())
    }

    fn lookup(&self, name: &str, want: &'static str, pick: fn(Sym) -> Option<usize>) -> R<usize> {
        self.syms
            .get(name)
            .copied()
            .and_then(pick)
            .ok_or_else(|| ParseErrorKind::Undefined {
                name: name.to_owned(),
                want,
            })
    }

    fn vm(&self, n: &str) -> R<usize> {
        self.lookup(n, "VM", |s| if let Sym::Vm(i) = s { Some(i) } else { None })
    }
    fn gpu(&self, n: &str) -> R<usize> {
        self.lookup(n, "GPU queue", |s| {
            if let Sym::Gpu(i) = s {
                Some(i)
            } else {
                None
            }
        })
    }
    fn bo(&self, n: &str) -> R<usize> {
        self.lookup(n, "buffer object", |s| {
            if let Sym::Bo(i) = s {
                Some(i)
            } else {
                None
            }
        })
    }
    fn native(&self, n: &str) -> R<usize> {
        self.lookup(n, "native syncobj", |s| {
            if let Sym::Native(i) = s {
                Some(i)
            } else {
                None
            }
        })
    }
    fn uq(&self, n: &str) -> R<usize> {
        self.lookup(n, "user queue", |s| {
            if let Sym::Uq(i) = s {
                Some(i)
            } else {
                None
            }
        })
    }

    fn fence(&self, tok: &str) -> R<(FenceRef, Maker)> {
        if let Some((h, p)) = point(tok)? {
            let m = self
                .points
                .get(&(h, p))
                .copied()
                .ok_or(ParseErrorKind::NoPoint(h, p))?;
            return Ok((FenceRef::Point(h, p), m));
        }
        let i = self.lookup(tok, "fence", |s| {
            if let Sym::Fence(i) = s {
                Some(i)
            } else {
                None
            }
        })?;
        Ok((FenceRef::Named(i), self.fence_maker[i]))
    }

    fn waits(&self, list: Option<&str>) -> R<Vec<FenceRef>> {
        let Some(list) = list else {
            return Ok(Vec::new());
        };
        list.split(',')
            .map(|t| self.fence(t).map(|(f, _)| f))
            .collect()
    }

    fn bind_out(&mut self, name: Option<&str>, maker: Maker) -> R<Option<usize>> {
        let Some(name) = name else {
            return Ok(None);
        };
        let i = self.names.fences.len();
        self.define(name, Sym::Fence(i))?;
        self.names.fences.push(name.to_owned());
        self.fence_maker.push(maker);
        Ok(Some(i))
    }

    fn op(&self, kw: &str, args: &[&str]) -> R<Op> {
        const USAGE: &str =
            "bind items: map <va> <len> <bo> <offset> [ro] [noexec] [uncached] | unmap <va> <len> | sync-only";
        match (kw, args) {
            ("map", [a, l, b, o, flags @ ..]) => {
                let mut f = MapFlags::default();
                for fl in flags {
                    match *fl {
                        "ro" => f.read_only = true,
                        "noexec" => f.no_exec = true,
                        "uncached" => f.uncached = true,
                        _ => return Err(ParseErrorKind::Usage(USAGE)),
                    }
                }
                let (va, len) = (va("address", a)?, number("length", l)?);
                va.checked_add(len).ok_or(ParseErrorKind::Usage(
                    "a range's address plus length must fit in 64 bits",
                ))?;
                Ok(Op::Map {
                    va,
                    len,
                    bo: self.bo(b)?,
                    offset: number("offset", o)?,
                    flags: f,
                })
            }
            ("unmap", [a, l]) => {
                let (va, len) = (va("address", a)?, number("length", l)?);
                va.checked_add(len).ok_or(ParseErrorKind::Usage(
                    "a range's address plus length must fit in 64 bits",
                ))?;
                Ok(Op::Unmap { va, len })
            }
            ("sync-only", []) => Ok(Op::SyncOnly),
            ("map" | "unmap" | "sync-only", _) => Err(ParseErrorKind::Usage(USAGE)),
            _ => Err(ParseErrorKind::Unknown(kw.to_owned())),
        }
    }
}

fn access(kw: &str, args: &[&str]) -> R<Access> {
    const USAGE: &str = "access items: read <va> | write <va> <value>";
    match (kw, args) {
        ("read", [a]) => Ok(Access {
            va: va("address", a)?,
            write: None,
        }),
        ("write", [a, v]) => Ok(Access {
            va: va("address", a)?,
            write: Some(number("value", v)?),
        }),
        ("read" | "write", _) => Err(ParseErrorKind::Usage(USAGE)),
        _ => Err(ParseErrorKind::Unknown(kw.to_owned())),
    }
}

/// The block a command line opened: its command, waiting for its items.
enum Block {
    Ops(Cmd),
    Accesses(Cmd),
}

/// Splits `-> name` off the end of a line's arguments.
fn arrow<'a>(args: &[&'a str]) -> R<(Vec<&'a str>, Option<&'a str>)> {
    match args.iter().position(|a| *a == "->") {
        None => Ok((args.to_vec(), None)),
        Some(i) if i + 2 == args.len() => Ok((args[..i].to_vec(), Some(args[i + 1]))),
        Some(_) => Err(ParseErrorKind::Usage("`-> <name>` ends the line")),
    }
}

/// Parses a whole scenario file.
///
/// # Errors
///
/// [`ParseError`] for the first malformed line: an unknown command, wrong fields, a number
/// out of range, a name not defined before it is used (or defined twice, fences apart), a
/// timeline point nothing installs, `memory`/`slots` after other commands, an unclosed block.
pub fn parse(text: &str) -> Result<Script, ParseError> {
    let mut p = Parser::default();
    let mut script = Script::default();
    let mut setup_done = false;
    let mut open: Option<(usize, Block)> = None;
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let at = |kind| ParseError { line, kind };
        let content = raw.split('#').next().unwrap_or("");
        let toks: Vec<&str> = content.split_whitespace().collect();
        let Some((&kw, args)) = toks.split_first() else {
            continue;
        };
        if let Some((_, block)) = &mut open {
            if kw == "}" {
                if !args.is_empty() {
                    return Err(at(ParseErrorKind::Usage("`}` stands alone on its line")));
                }
                let cmd = match open.take().map(|(_, b)| b) {
                    Some(Block::Ops(c) | Block::Accesses(c)) => c,
                    None => continue,
                };
                script.cmds.push(cmd);
                continue;
            }
            match block {
                Block::Ops(Cmd::BindSync { ops, .. } | Cmd::BindAsync { ops, .. }) => {
                    ops.push(p.op(kw, args).map_err(at)?);
                }
                Block::Accesses(
                    Cmd::Gpu { accesses, .. }
                    | Cmd::Push {
                        cmd: UserCmd::Run { accesses, .. },
                        ..
                    },
                ) => accesses.push(access(kw, args).map_err(at)?),
                _ => return Err(at(ParseErrorKind::Unknown(kw.to_owned()))),
            }
            continue;
        }
        let (args, block) = match args.split_last() {
            Some((&"{", rest)) => (rest, true),
            _ => (args, false),
        };
        let (args, out) = arrow(args).map_err(at)?;
        if matches!(kw, "memory" | "slots") {
            if setup_done {
                return Err(at(ParseErrorKind::Misplaced(if kw == "memory" {
                    "memory"
                } else {
                    "slots"
                })));
            }
        } else {
            setup_done = true;
        }
        let parsed = command(&mut p, &mut script.setup, kw, &args, out, block);
        let parsed = parsed.map_err(at)?;
        match parsed {
            Parsed::Setup => {}
            Parsed::Cmd(c) => {
                script.lines.push(line);
                script.cmds.push(c);
            }
            Parsed::Block(b) => {
                script.lines.push(line);
                open = Some((line, b));
            }
        }
    }
    if let Some((start, _)) = open {
        return Err(ParseError {
            line: start,
            kind: ParseErrorKind::Unclosed,
        });
    }
    script.names = p.names;
    Ok(script)
}

enum Parsed {
    Setup,
    Cmd(Cmd),
    Block(Block),
}

#[expect(
    clippy::too_many_lines,
    reason = "one match arm per command, each short"
)]
fn command(
    p: &mut Parser,
    setup: &mut Setup,
    kw: &str,
    args: &[&str],
    out: Option<&str>,
    block: bool,
) -> R<Parsed> {
    use ParseErrorKind::Usage;
    let no_out = |u: &'static str| {
        if out.is_some() || block {
            Err(Usage(u))
        } else {
            Ok(())
        }
    };
    let c = match kw {
        "memory" => {
            const U: &str = "memory <size> (a multiple of 1M)";
            no_out(U)?;
            let [s] = args else { return Err(Usage(U)) };
            let v = ranged("memory", s, 1 << 20, MAX_MEMORY_MIB << 20)?;
            if v % (1 << 20) != 0 {
                return Err(Usage(U));
            }
            setup.memory_mib = v >> 20;
            return Ok(Parsed::Setup);
        }
        "slots" => {
            const U: &str = "slots <n>";
            no_out(U)?;
            let [s] = args else { return Err(Usage(U)) };
            setup.slots = index("slots", s, 1, MAX_SLOTS)?;
            return Ok(Parsed::Setup);
        }
        "timeout" => {
            const U: &str = "timeout bind|gpu|xgs|bound <duration>";
            no_out(U)?;
            let [k, d] = args else { return Err(Usage(U)) };
            let kind = match *k {
                "bind" => TimeoutKind::Bind,
                "gpu" => TimeoutKind::Gpu,
                "xgs" => TimeoutKind::Xgs,
                "bound" => TimeoutKind::Bound,
                _ => return Err(Usage(U)),
            };
            Cmd::Timeout {
                kind,
                us: duration("timeout", d)?,
            }
        }
        "vm" => {
            const U: &str = "vm <name> fifo|range-ordered [lock-region] [queues=<n>]";
            no_out(U)?;
            let o = Opts::new(args, &["queues"], U)?;
            let (name, policy, rest) = match o.pos.as_slice() {
                [n, pol, rest @ ..] => (*n, *pol, rest),
                _ => return Err(Usage(U)),
            };
            let policy = match policy {
                "fifo" => Policy::Fifo,
                "range-ordered" => Policy::RangeOrdered,
                _ => return Err(Usage(U)),
            };
            let lock_region = match rest {
                [] => false,
                ["lock-region"] => true,
                _ => return Err(Usage(U)),
            };
            let queues = match o.get("queues") {
                Some(q) => index("queues", q, 1, MAX_QUEUES)?,
                None => 1,
            };
            let i = p.names.vms.len();
            p.define(name, Sym::Vm(i))?;
            p.names.vms.push(name.to_owned());
            p.names.vm_queues.push(queues);
            Cmd::Vm {
                policy,
                lock_region,
                queues,
            }
        }
        "gpu-queue" => {
            const U: &str = "gpu-queue <name>";
            no_out(U)?;
            let [n] = args else { return Err(Usage(U)) };
            let i = p.names.gpu_queues.len();
            p.define(n, Sym::Gpu(i))?;
            p.names.gpu_queues.push((*n).to_owned());
            Cmd::GpuQueue
        }
        "bo" => {
            const U: &str = "bo <name> <size> huge|tiles|scattered";
            no_out(U)?;
            let [n, s, c] = args else {
                return Err(Usage(U));
            };
            let (size, how) = (number("size", s)?, contiguity(c)?);
            let i = p.names.bos.len();
            p.define(n, Sym::Bo(i))?;
            p.names.bos.push((*n).to_owned());
            Cmd::Bo { bo: i, size, how }
        }
        "close" => {
            const U: &str = "close <bo> [evicted]";
            no_out(U)?;
            let (b, evicted) = match args {
                [b] => (*b, false),
                [b, "evicted"] => (*b, true),
                _ => return Err(Usage(U)),
            };
            Cmd::Close {
                bo: p.bo(b)?,
                evicted,
            }
        }
        "swap-in" => {
            const U: &str = "swap-in <bo> <size> huge|tiles|scattered";
            no_out(U)?;
            let [b, s, c] = args else {
                return Err(Usage(U));
            };
            Cmd::SwapIn {
                bo: p.bo(b)?,
                size: number("size", s)?,
                how: contiguity(c)?,
            }
        }
        "cleanup" => {
            no_out("cleanup")?;
            if !args.is_empty() {
                return Err(Usage("cleanup"));
            }
            Cmd::Cleanup
        }
        "host-fence" => {
            const U: &str = "host-fence <handle>@<point> [-> <fence>]";
            if block {
                return Err(Usage(U));
            }
            let [pt] = args else { return Err(Usage(U)) };
            let (handle, point) = point(pt)?.ok_or(Usage(U))?;
            p.points.insert((handle, point), Maker::Host);
            Cmd::HostFence {
                handle,
                point,
                out: p.bind_out(out, Maker::Host)?,
            }
        }
        "signal" => {
            const U: &str = "signal <fence> [error=<errno>]";
            no_out(U)?;
            let o = Opts::new(args, &["error"], U)?;
            let [f] = o.pos.as_slice() else {
                return Err(Usage(U));
            };
            let (fence, maker) = p.fence(f)?;
            if maker != Maker::Host {
                return Err(ParseErrorKind::NotHost((*f).to_owned()));
            }
            Cmd::Signal {
                fence,
                error: o.get("error").map(errno).transpose()?,
            }
        }
        "bind-sync" => {
            const U: &str = "bind-sync <vm> [kind=<kind>] {";
            if out.is_some() || !block {
                return Err(Usage(U));
            }
            let o = Opts::new(args, &["kind"], U)?;
            let [v] = o.pos.as_slice() else {
                return Err(Usage(U));
            };
            return Ok(Parsed::Block(Block::Ops(Cmd::BindSync {
                vm: p.vm(v)?,
                kind: o.get("kind").map_or(Ok(BindKind::Churn), kind)?,
                ops: Vec::new(),
            })));
        }
        "bind-async" => {
            const U: &str = "bind-async <vm> [queue=<n>] [wait=<fence>,..] [out=<handle>@<point>] [kind=<kind>] [-> <fence>] {";
            if !block {
                return Err(Usage(U));
            }
            let o = Opts::new(args, &["queue", "wait", "out", "kind"], U)?;
            let [v] = o.pos.as_slice() else {
                return Err(Usage(U));
            };
            let vm = p.vm(v)?;
            let queues = p.names.vm_queues[vm];
            let queue = match o.get("queue") {
                Some(q) => index("queue", q, 0, MAX_QUEUES)?,
                None => 0,
            };
            if queue >= queues {
                return Err(ParseErrorKind::NoQueue {
                    vm: (*v).to_owned(),
                    queues,
                    queue,
                });
            }
            let waits = p.waits(o.get("wait"))?;
            let out_point = match o.get("out") {
                Some(t) => Some(point(t)?.ok_or(Usage(U))?),
                None => None,
            };
            if let Some(pt) = out_point {
                p.points.insert(pt, Maker::Other);
            }
            return Ok(Parsed::Block(Block::Ops(Cmd::BindAsync {
                vm,
                queue,
                waits,
                out_point,
                kind: o.get("kind").map_or(Ok(BindKind::Churn), kind)?,
                ops: Vec::new(),
                out: p.bind_out(out, Maker::Other)?,
            })));
        }
        "gpu" => {
            const U: &str = "gpu <gpu-queue> <vm> [wait=<fence>,..] [-> <fence>] {";
            if !block {
                return Err(Usage(U));
            }
            let o = Opts::new(args, &["wait"], U)?;
            let [q, v] = o.pos.as_slice() else {
                return Err(Usage(U));
            };
            return Ok(Parsed::Block(Block::Accesses(Cmd::Gpu {
                queue: p.gpu(q)?,
                vm: p.vm(v)?,
                waits: p.waits(o.get("wait"))?,
                accesses: Vec::new(),
                out: p.bind_out(out, Maker::Other)?,
            })));
        }
        "native" => {
            const U: &str = "native <name> <bo> <offset> 32|64 [<vm>@<va> ...]";
            no_out(U)?;
            let [n, b, off, width, views @ ..] = args else {
                return Err(Usage(U));
            };
            let wide = match *width {
                "32" => false,
                "64" => true,
                _ => return Err(Usage(U)),
            };
            let off = ranged("offset", off, 0, MAX_VA)?;
            if off % 8 != 0 {
                return Err(Usage("a native syncobj's offset is a multiple of 8"));
            }
            let bo = p.bo(b)?;
            let views = views
                .iter()
                .map(|t| {
                    let (v, a) = t.split_once('@').ok_or(Usage(U))?;
                    Ok((p.vm(v)?, va("address", a)?))
                })
                .collect::<R<Vec<_>>>()?;
            let i = p.names.natives.len();
            p.define(n, Sym::Native(i))?;
            p.names.natives.push((*n).to_owned());
            Cmd::Native {
                bo,
                off,
                wide,
                views,
            }
        }
        "user-queue" => {
            const U: &str = "user-queue <name> <vm> <capacity>";
            no_out(U)?;
            let [n, v, c] = args else {
                return Err(Usage(U));
            };
            let (vm, cap) = (p.vm(v)?, index("capacity", c, 1, MAX_RING)?);
            let i = p.names.user_queues.len();
            p.define(n, Sym::Uq(i))?;
            p.names.user_queues.push((*n).to_owned());
            Cmd::UserQueue { vm, cap }
        }
        "push" => {
            const U: &str = "push <uq> wait <native> gt|le <v> | push <uq> set|add <native> <v> | push <uq> run [per-step=<n>] {";
            if out.is_some() {
                return Err(Usage(U));
            }
            let o = Opts::new(args, &["per-step"], U)?;
            let (uq, what) = match o.pos.as_slice() {
                [q, rest @ ..] => (p.uq(q)?, rest),
                [] => return Err(Usage(U)),
            };
            match (what, block) {
                (["run"], true) => {
                    let per_step = match o.get("per-step") {
                        Some(n) => index("per-step", n, 1, MAX_RING)?,
                        None => 1,
                    };
                    return Ok(Parsed::Block(Block::Accesses(Cmd::Push {
                        uq,
                        cmd: UserCmd::Run {
                            accesses: Vec::new(),
                            per_step,
                        },
                    })));
                }
                (["wait", s, c, v], false) if o.kv.is_empty() => Cmd::Push {
                    uq,
                    cmd: UserCmd::Wait {
                        sync: p.native(s)?,
                        cond: cond(c, v)?,
                    },
                },
                ([op @ ("set" | "add"), s, v], false) if o.kv.is_empty() => Cmd::Push {
                    uq,
                    cmd: UserCmd::Sync {
                        sync: p.native(s)?,
                        op: sync_op(op, v)?,
                    },
                },
                _ => return Err(Usage(U)),
            }
        }
        "kick" => {
            no_out("kick <uq>")?;
            let [q] = args else {
                return Err(Usage("kick <uq>"));
            };
            Cmd::Kick { uq: p.uq(q)? }
        }
        "xgs-wait" => {
            const U: &str = "xgs-wait <native> gt|le <v> [-> <fence>]";
            if block {
                return Err(Usage(U));
            }
            let [s, c, v] = args else {
                return Err(Usage(U));
            };
            Cmd::XgsWait {
                native: p.native(s)?,
                cond: cond(c, v)?,
                out: p.bind_out(out, Maker::Other)?,
            }
        }
        "xgs-signal" => {
            const U: &str = "xgs-signal <native> set|add <v> [wait=<fence>,..] [-> <fence>]";
            if block {
                return Err(Usage(U));
            }
            let o = Opts::new(args, &["wait"], U)?;
            let [s, op, v] = o.pos.as_slice() else {
                return Err(Usage(U));
            };
            Cmd::XgsSignal {
                waits: p.waits(o.get("wait"))?,
                native: p.native(s)?,
                op: sync_op(op, v)?,
                out: p.bind_out(out, Maker::Other)?,
            }
        }
        "step" => {
            const U: &str = "step <duration> [<count>]";
            no_out(U)?;
            let (d, n) = match args {
                [d] => (*d, None),
                [d, n] => (*d, Some(*n)),
                _ => return Err(Usage(U)),
            };
            Cmd::Step {
                dt: duration("step", d)?,
                count: n.map_or(Ok(1), |n| ranged("count", n, 1, MAX_STEP_COUNT))?,
            }
        }
        "drain" => {
            const U: &str = "drain [<step> [<limit>]]";
            no_out(U)?;
            let (dt, limit) = match args {
                [] => (1000, 1_000_000),
                [d] => (duration("step", d)?, 1_000_000),
                [d, l] => (duration("step", d)?, duration("limit", l)?),
                _ => return Err(Usage(U)),
            };
            if dt == 0 {
                return Err(Usage("a drain's step is longer than 0"));
            }
            Cmd::Drain { dt, limit }
        }
        "map" | "unmap" | "sync-only" | "read" | "write" | "}" => {
            return Err(ParseErrorKind::OutsideBlock(kw.to_owned()));
        }
        _ => return Err(ParseErrorKind::Unknown(kw.to_owned())),
    };
    Ok(Parsed::Cmd(c))
}
