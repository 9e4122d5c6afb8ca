//! `vmsim --svg FILE`: one self-contained SVG of a finished run, in three views stacked top to
//! bottom:
//!
//! 1. **VA space** of each VM at the end: one bar per VM, a segment per run of mappings of
//!    one object (adjacent mappings of the same object are drawn as one segment; hover shows
//!    the range), sparse/NULL mappings hatched grey, holes as dashed outlines labelled with
//!    their size. The scale is **per segment and logarithmic**: a segment of `len` bytes is
//!    `4 + log2(len / 4 KiB + 1)` units wide, the row scaled to the bar, so a 4 KiB mapping
//!    next to a 128 TiB hole stays visible; the axis below gives each segment's start GPU VA.
//! 2. **Page-table occupancy** per VM and level: tables at that level and the entries in use
//!    (leaves plus pointers to next-level tables) against the capacity (tables x 512), as a
//!    heat cell.
//! 3. **Timeline** of the first [`crate::timeline::Timeline::window_us`] of simulated time: a
//!    lane per bind queue, per VM's synchronous binds and per GPU queue. Each job is a grey
//!    line from its submission to when it left the queue (waiting) and a mark there (green
//!    done, red failed, orange timed out); the bottom lane marks fence signals (red and tall:
//!    signalled with an error).
//!
//! Plain formatted strings: the picture needs rectangles, lines and text only.

use std::fmt::Write as _;

use gpuva::VaFlags;

use crate::timeline::{Lane, Outcome};
use crate::world::World;

const W: f64 = 1500.0;
const X0: f64 = 190.0;
const BAR: f64 = W - X0 - 30.0;
const MAX_SEGMENTS: usize = 160;
/// Segments a VM row is clustered down to when it has more than [`MAX_SEGMENTS`].
const CLUSTERED: usize = 24;

/// Escapes text for XML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn size(b: u64) -> String {
    const U: [(&str, u64); 5] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("B", 1),
    ];
    for (n, v) in U {
        if b >= v {
            let x = b as f64 / v as f64;
            return if (x - x.round()).abs() < 0.05 {
                format!("{x:.0} {n}")
            } else {
                format!("{x:.1} {n}")
            };
        }
    }
    "0 B".to_owned()
}

/// Colour of object `o` (golden-angle hues, so neighbours differ).
fn colour(o: u64) -> String {
    format!("hsl({},62%,55%)", (o * 137) % 360)
}

#[derive(Clone)]
enum Seg {
    /// Many segments separated by small holes, drawn as one box at a linear scale inside.
    Cluster {
        va: u64,
        len: u64,
        items: Vec<Seg>,
    },
    Map {
        va: u64,
        len: u64,
        obj: u64,
        n: u32,
    },
    Sparse {
        va: u64,
        len: u64,
        n: u32,
    },
    Hole {
        va: u64,
        len: u64,
    },
}

impl Seg {
    fn va(&self) -> u64 {
        match *self {
            Self::Map { va, .. }
            | Self::Sparse { va, .. }
            | Self::Hole { va, .. }
            | Self::Cluster { va, .. } => va,
        }
    }
    fn len(&self) -> u64 {
        match *self {
            Self::Map { len, .. }
            | Self::Sparse { len, .. }
            | Self::Hole { len, .. }
            | Self::Cluster { len, .. } => len,
        }
    }
    fn units(&self) -> f64 {
        let u = 4.0 + ((self.len() / 4096) as f64 + 1.0).log2();
        if matches!(self, Self::Cluster { .. }) {
            // Room for the detail drawn inside.
            u * 4.0
        } else {
            u
        }
    }
}

/// Merges the segments between holes smaller than a threshold into clusters, the threshold
/// the smallest power of two that leaves at most [`CLUSTERED`] segments (rows of at most
/// [`MAX_SEGMENTS`] are drawn as they are).
fn clustered(segs: Vec<Seg>) -> Vec<Seg> {
    if segs.len() <= MAX_SEGMENTS {
        return segs;
    }
    let mut t = 1u64 << 12;
    loop {
        let mut out: Vec<Seg> = Vec::new();
        let mut cur: Vec<Seg> = Vec::new();
        let flush = |cur: &mut Vec<Seg>, out: &mut Vec<Seg>| match cur.len() {
            0 => {}
            1 => out.append(cur),
            _ => {
                let va = cur[0].va();
                let end = cur.last().map_or(va, |s| s.va() + s.len());
                out.push(Seg::Cluster {
                    va,
                    len: end - va,
                    items: std::mem::take(cur),
                });
            }
        };
        for s in &segs {
            match s {
                Seg::Hole { len, .. } if *len >= t => {
                    flush(&mut cur, &mut out);
                    out.push(s.clone());
                }
                _ => cur.push(s.clone()),
            }
        }
        flush(&mut cur, &mut out);
        if out.len() <= CLUSTERED || t >= 1 << 47 {
            return out;
        }
        t <<= 1;
    }
}

fn segments(w: &World, vm: usize) -> Vec<Seg> {
    let v = &w.vms[vm];
    let range = v.vm.va_space().range();
    let mut out: Vec<Seg> = Vec::new();
    let mut at = range.start;
    for m in v.vm.va_space().iter() {
        let (va, len) = (m.addr(), m.length());
        if va > at {
            out.push(Seg::Hole {
                va: at,
                len: va - at,
            });
        }
        at = va + len;
        let sparse = m.obj().is_none() || m.flags().contains(VaFlags::SPARSE);
        let obj = m.obj().map_or(0, gpuva::ObjId::get);
        match (out.last_mut(), sparse) {
            (
                Some(Seg::Map {
                    va: a,
                    len: l,
                    obj: o,
                    n,
                }),
                false,
            ) if *a + *l == va && *o == obj => {
                *l += len;
                *n += 1;
            }
            (Some(Seg::Sparse { va: a, len: l, n }), true) if *a + *l == va => {
                *l += len;
                *n += 1;
            }
            (_, true) => out.push(Seg::Sparse { va, len, n: 1 }),
            (_, false) => out.push(Seg::Map { va, len, obj, n: 1 }),
        }
    }
    if range.end > at {
        out.push(Seg::Hole {
            va: at,
            len: range.end - at,
        });
    }
    out
}

fn va_view(o: &mut String, w: &World, y0: f64) -> f64 {
    let _ = writeln!(
        o,
        r##"<g id="va-space"><text x="10" y="{}" class="h">VA space at the end (per-segment log scale: a segment of len bytes is 4 + log2(len/4KiB + 1) units wide)</text>"##,
        y0 + 18.0
    );
    let mut y = y0 + 34.0;
    let mut objs: Vec<u64> = Vec::new();
    for vm in 0..w.vms.len() {
        let mut segs = clustered(segments(w, vm));
        let more = segs.len().saturating_sub(MAX_SEGMENTS);
        segs.truncate(MAX_SEGMENTS);
        let total: f64 = segs.iter().map(|s| s.units()).sum::<f64>().max(1.0);
        let k = BAR / total;
        let v = &w.vms[vm];
        let _ = writeln!(
            o,
            r##"<g class="vm"><text x="10" y="{:.1}" class="l">{} (VM {vm})</text>"##,
            y + 16.0,
            esc(&v.name)
        );
        let mut x = X0;
        let mut last_label = f64::MIN;
        for s in &segs {
            let sw = s.units() * k;
            let tip = format!("{:#x}..{:#x} ({})", s.va(), s.va() + s.len(), size(s.len()));
            match s {
                Seg::Cluster { va, len, items } => {
                    let maps = items
                        .iter()
                        .filter(|i| !matches!(i, Seg::Hole { .. }))
                        .count();
                    let _ = writeln!(
                        o,
                        r##"<g class="cluster"><rect x="{x:.1}" y="{:.1}" width="{sw:.1}" height="30" fill="#f4f4f4" stroke="#333" stroke-width="0.8"><title>cluster {tip}: {maps} mapping runs between small holes, linear scale inside</title></rect>"##,
                        y - 3.0
                    );
                    let lin = |a: u64| x + sw * ((a - va) as f64 / *len as f64);
                    for i in items {
                        let fill = match *i {
                            Seg::Map { obj, .. } => {
                                if !objs.contains(&obj) {
                                    objs.push(obj);
                                }
                                colour(obj)
                            }
                            Seg::Sparse { .. } => "url(#hatch)".to_owned(),
                            _ => continue,
                        };
                        let _ = writeln!(
                            o,
                            r#"<rect x="{:.2}" y="{y:.1}" width="{:.2}" height="24" fill="{fill}"/>"#,
                            lin(i.va()),
                            (lin(i.va() + i.len()) - lin(i.va())).max(0.4)
                        );
                    }
                    if sw > 130.0 {
                        let _ = write!(
                            o,
                            r##"<text x="{:.1}" y="{:.1}" class="s" text-anchor="middle">{maps} runs in {} (linear inside)</text>"##,
                            x + sw / 2.0,
                            y - 5.0,
                            size(*len)
                        );
                    }
                    let _ = writeln!(o, "</g>");
                }
                &Seg::Map { obj, n, .. } => {
                    if !objs.contains(&obj) {
                        objs.push(obj);
                    }
                    let _ = writeln!(
                        o,
                        r##"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="24" fill="{}" stroke="#333" stroke-width="0.5"><title>object {obj}: {tip}, {n} mapping(s)</title></rect>"##,
                        sw.max(0.5),
                        colour(obj)
                    );
                }
                Seg::Sparse { n, .. } => {
                    let _ = writeln!(
                        o,
                        r##"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="24" fill="url(#hatch)" stroke="#333" stroke-width="0.5"><title>sparse/NULL: {tip}, {n} mapping(s)</title></rect>"##,
                        sw.max(0.5)
                    );
                }
                &Seg::Hole { len, .. } => {
                    let _ = writeln!(
                        o,
                        r##"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="16" fill="#fafafa" stroke="#999" stroke-dasharray="3,2"><title>hole: {tip}</title></rect>"##,
                        y + 4.0,
                        sw.max(0.5)
                    );
                    if sw > 46.0 {
                        let _ = writeln!(
                            o,
                            r##"<text x="{:.1}" y="{:.1}" class="s" text-anchor="middle">{}</text>"##,
                            x + sw / 2.0,
                            y + 16.0,
                            size(len)
                        );
                    }
                }
            }
            if x - last_label > 80.0 {
                let _ = writeln!(
                    o,
                    r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#555"/><text x="{x:.1}" y="{:.1}" class="s">{:#x}</text>"##,
                    y + 24.0,
                    y + 29.0,
                    y + 38.0,
                    s.va()
                );
                last_label = x;
            }
            x += sw;
        }
        if more > 0 {
            let _ = writeln!(
                o,
                r##"<text x="{:.1}" y="{:.1}" class="s">+{more} more segments</text>"##,
                W - 130.0,
                y - 3.0
            );
        }
        let _ = writeln!(o, "</g>");
        y += 50.0;
    }
    // Legend.
    let _ = writeln!(o, r#"<g class="legend">"#);
    let mut x = X0;
    let _ = writeln!(
        o,
        r##"<text x="10" y="{:.1}" class="l">legend</text>"##,
        y + 12.0
    );
    objs.sort_unstable();
    let shown = objs.len().min(40);
    for (i, obj) in objs.iter().take(shown).enumerate() {
        if i > 0 && i % 20 == 0 {
            x = X0;
            y += 18.0;
        }
        let _ = writeln!(
            o,
            r##"<rect x="{x:.1}" y="{y:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}" class="s">obj {obj}</text>"##,
            colour(*obj),
            x + 15.0,
            y + 10.0
        );
        x += 60.0;
    }
    y += 18.0;
    let _ = writeln!(
        o,
        r##"<rect x="{X0}" y="{y:.1}" width="12" height="12" fill="url(#hatch)" stroke="#333"/><text x="{:.1}" y="{:.1}" class="s">sparse / NULL</text><rect x="{:.1}" y="{y:.1}" width="12" height="12" fill="#fafafa" stroke="#999" stroke-dasharray="3,2"/><text x="{:.1}" y="{:.1}" class="s">hole (size in the box when it fits)</text>"##,
        X0 + 15.0,
        y + 10.0,
        X0 + 120.0,
        X0 + 135.0,
        y + 10.0
    );
    if objs.len() > shown {
        let _ = writeln!(
            o,
            r##"<text x="{:.1}" y="{:.1}" class="s">(+{} more objects)</text>"##,
            X0 + 380.0,
            y + 10.0,
            objs.len() - shown
        );
    }
    let _ = writeln!(o, "</g></g>");
    y + 30.0
}

fn tables_view(o: &mut String, w: &World, y0: f64) -> f64 {
    let _ = writeln!(
        o,
        r##"<g id="page-tables"><text x="10" y="{}" class="h">Page-table occupancy per level (entries used = leaves + next-level tables; colour = used / capacity)</text>"##,
        y0 + 18.0
    );
    let mut y = y0 + 30.0;
    let cell = BAR / 4.0;
    for (vm, v) in w.vms.iter().enumerate() {
        let pt = v.vm.page_table();
        let Ok(a) = pt.audit(v.vm.memory()) else {
            continue;
        };
        let start = usize::from(pt.format().start_level().as_u8());
        let _ = writeln!(
            o,
            r##"<g class="vm-tables"><text x="10" y="{:.1}" class="l">{} (VM {vm})</text>"##,
            y + 16.0,
            esc(&v.name)
        );
        for l in start..4 {
            let tables = a.tables[l];
            let next = if l < 3 { a.tables[l + 1] as u64 } else { 0 };
            let used = a.leaves[l] + next;
            let cap = tables as u64 * 512;
            let f = if cap > 0 {
                used as f64 / cap as f64
            } else {
                0.0
            };
            let x = X0 + (l - start) as f64 * cell;
            // White (empty) to deep red (full), log-ish so sparse tables still show colour.
            let heat = (f.sqrt() * 100.0).clamp(0.0, 100.0);
            let _ = writeln!(
                o,
                r##"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="24" fill="hsl(10,80%,{:.0}%)" stroke="#333" stroke-width="0.5"/><rect x="{x:.1}" y="{:.1}" width="{:.1}" height="3" fill="#222"/><text x="{:.1}" y="{:.1}" class="s">L{l}: {tables} table(s), {used} / {cap} entries ({:.2}%)</text>"##,
                cell - 6.0,
                97.0 - heat * 0.5,
                y + 21.0,
                ((cell - 6.0) * f).max(if used > 0 { 1.0 } else { 0.0 }),
                x + 5.0,
                y + 16.0,
                f * 100.0
            );
        }
        let _ = writeln!(o, "</g>");
        y += 30.0;
    }
    let _ = writeln!(o, "</g>");
    y + 10.0
}

fn lane_name(w: &World, l: Lane) -> String {
    let vm = |i: usize| w.vms.get(i).map_or("?", |v| v.name.as_str());
    match l {
        Lane::Bind { vm: v, q } => format!("{} bind queue {q}", vm(v)),
        Lane::Sync { vm: v } => format!("{} sync binds", vm(v)),
        Lane::Gpu { q } => format!("GPU queue {q}"),
    }
}

fn timeline_view(o: &mut String, w: &World, y0: f64) -> f64 {
    let t = &w.timeline;
    let end = t.window_us.min(w.now).max(1);
    let _ = writeln!(
        o,
        r##"<g id="timeline"><text x="10" y="{}" class="h">Timeline, first {} ms of simulated time: grey = waiting in the queue, mark = left it (green done, red failed, orange timed out)</text>"##,
        y0 + 18.0,
        end / 1000
    );
    let xt = |us: u64| X0 + BAR * (us.min(end) as f64 / end as f64);
    let mut lanes: Vec<Lane> = t.spans.iter().map(|s| s.lane).collect();
    lanes.sort_unstable();
    lanes.dedup();
    let mut y = y0 + 34.0;
    // Axis.
    // A 1-2-5 step giving at most 16 ticks.
    let step = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
        .iter()
        .map(|ms| ms * 1000)
        .find(|s| end / s <= 16)
        .unwrap_or(10_000_000);
    let top = y;
    let bottom = y + (lanes.len() as f64 + 1.0) * 22.0;
    let mut tick = 0;
    while tick <= end {
        let x = xt(tick);
        let _ = writeln!(
            o,
            r##"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="#e4e4e4"/><text x="{x:.1}" y="{:.1}" class="s" text-anchor="middle">{} ms</text>"##,
            bottom + 12.0,
            tick / 1000
        );
        tick += step;
    }
    for lane in &lanes {
        let _ = writeln!(
            o,
            r##"<g class="lane"><text x="10" y="{:.1}" class="l">{}</text>"##,
            y + 14.0,
            esc(&lane_name(w, *lane))
        );
        for s in t.spans.iter().filter(|s| s.lane == *lane) {
            let (a, b) = (xt(s.submitted), xt(s.start));
            if b - a >= 0.5 {
                let _ = writeln!(
                    o,
                    r##"<line x1="{a:.1}" y1="{:.1}" x2="{b:.1}" y2="{:.1}" stroke="#aaa" stroke-width="3"/>"##,
                    y + 10.0,
                    y + 10.0
                );
            }
            let c = match s.outcome {
                Outcome::Done => "#2a9d3a",
                Outcome::Failed => "#d62828",
                Outcome::TimedOut => "#f08c00",
            };
            let h = if s.outcome == Outcome::Done {
                14.0
            } else {
                20.0
            };
            let _ = writeln!(
                o,
                r##"<rect x="{:.1}" y="{:.1}" width="2.5" height="{h}" fill="{c}"><title>submitted {} us, left the queue {} us: {:?}</title></rect>"##,
                b - 1.0,
                y + 10.0 - h / 2.0,
                s.submitted,
                s.start,
                s.outcome
            );
        }
        let _ = writeln!(o, "</g>");
        y += 22.0;
    }
    let _ = writeln!(
        o,
        r##"<g class="fences"><text x="10" y="{:.1}" class="l">fence signals</text>"##,
        y + 14.0
    );
    let mut errors = 0;
    for s in &t.signals {
        let x = xt(s.at);
        if s.error {
            errors += 1;
            let _ = writeln!(
                o,
                r##"<rect x="{:.1}" y="{y:.1}" width="3" height="20" fill="#d62828"><title>fence created {} us, signalled with an error at {} us</title></rect>"##,
                x - 1.5,
                s.created,
                s.at
            );
        } else {
            let c = if s.gpu { "#1d4ed8" } else { "#7c3aed" };
            let _ = writeln!(
                o,
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{c}" stroke-width="1"/>"##,
                y + 5.0,
                y + 15.0
            );
        }
    }
    let _ = writeln!(
        o,
        r##"<text x="{:.1}" y="{:.1}" class="s">{} signals: blue GPU fence, violet bind/other fence, red signalled with an error ({errors})</text></g></g>"##,
        X0,
        bottom + 28.0,
        t.signals.len()
    );
    bottom + 40.0
}

/// The picture of a finished run (see the module documentation for what it shows).
#[must_use]
pub fn render(w: &World) -> String {
    let mut body = String::new();
    let mut y = 40.0;
    y = va_view(&mut body, w, y);
    y = tables_view(&mut body, w, y);
    y = timeline_view(&mut body, w, y);
    let mut o = String::new();
    let _ = writeln!(
        o,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{y:.0}" viewBox="0 0 {W} {y:.0}" font-family="sans-serif">
<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#ddd"/><line x1="0" y1="0" x2="0" y2="6" stroke="#888" stroke-width="2"/></pattern>
<style>.h{{font-size:15px;font-weight:bold}} .l{{font-size:12px}} .s{{font-size:10px;fill:#333}}</style></defs>
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="24" font-size="18" font-weight="bold">vmsim: {} VMs, {} ms simulated</text>"##,
        w.vms.len(),
        w.now / 1000
    );
    o.push_str(&body);
    o.push_str("</svg>\n");
    o
}
