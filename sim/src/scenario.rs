//! The built-in scenario: Vulkan sparse-texture streaming, buffer churn with huge-page-backed
//! objects, blocked asynchronous binds beside synchronous ones under both ordering policies, a
//! bind that times out, an object shared by two VMs, and a shrinker that evicts and revalidates
//! objects under memory pressure; more VMs than address-space slots; and CSF-style user
//! submission: a producer user queue on the game VM and a consumer on the compositor, paced
//! through native syncobjs, bridged to the bind queue in both directions by the XGS queue.

use std::collections::{BTreeMap, BTreeSet};

use vmbind::queue::{Policy, SwFence};
use vmbind::BindOp;

use crate::usq::{Cond, SyncOp, UserCmd};
use crate::world::{Access, BindKind, Contiguity, World, WorldError};

/// Scale knobs.
#[derive(Clone, Debug)]
pub struct Params {
    /// Seed of every random choice.
    pub seed: u64,
    /// Frames (each 4 simulated milliseconds).
    pub frames: u32,
    /// Churn VMs besides the game VM and the compositor (at least 1).
    pub churn_vms: usize,
    /// Physical memory, MiB.
    pub mem_mib: u64,
    /// Address-space slots.
    pub slots: usize,
    /// Tiles bound per frame.
    pub tiles_per_frame: usize,
    /// GPU accesses per sampling job.
    pub samples: usize,
    /// Record the run as a scenario file (`World::record`, `World::take_script`).
    pub record: bool,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            seed: 1,
            frames: 600,
            churn_vms: 2,
            mem_mib: 160,
            slots: 3,
            tiles_per_frame: 24,
            samples: 96,
            record: false,
        }
    }
}

/// A small deterministic generator (SplitMix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// True with probability `p` percent.
    pub fn pct(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

const TILE: u64 = 64 << 10;
const IMAGE: u64 = 0x40_0000_0000;
const IMAGE_TILES: u64 = 16384; // 1 GiB
const POOL_TILES: u64 = 1024; // 64 MiB
const SHARED_SIZE: u64 = 4 << 20;
const STEPS_PER_FRAME: u64 = 4;
const STEP_US: u64 = 1000;
const SYNC_VA: u64 = 0x30_0000_0000;
const STREAM_VA: u64 = 0x28_0000_0000;
const STREAM_SIZE: u64 = 8 << 20;
const BLOCK: u64 = 2 << 20;

struct Buffer {
    vm: usize,
    bo: u32,
    va: u64,
    size: u64,
    how: Contiguity,
    holes: BTreeSet<u64>,
    evicted: bool,
    last_use: u32,
    /// Fences of the binds on this buffer that may not have run yet. The shrinker leaves a
    /// buffer with any of them pending alone, as a driver waits for an object's pending binds
    /// before evicting it: a queued map still holds the old pages, and running it after the
    /// eviction would map them again behind the shrinker's back.
    pending: Vec<SwFence>,
}

impl Buffer {
    /// Whether every bind on the buffer has run (or failed); forgets the ones that have.
    fn settled(&mut self) -> bool {
        self.pending.retain(|f| f.status().is_none());
        self.pending.is_empty()
    }
}

/// What the director did (beyond the world's counters), for the report.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Story {
    /// Tiles bound, unbound.
    pub tiles: (u64, u64),
    /// Most tiles resident at once.
    pub peak_resident: u64,
    /// Buffers created, retired.
    pub buffers: (u64, u64),
    /// 64 KiB holes punched into mapped buffers (block splits where huge-page backed).
    pub holes: u64,
    /// Blocked async binds (waiting on a late host fence).
    pub blocked: u64,
    /// Objects the shrinker evicted, and revalidated before their next use.
    pub evicted: u64,
    /// See `evicted`.
    pub revalidated: u64,
    /// Buffer creations skipped for want of memory even after shrinking.
    pub oom_skips: u64,
    /// Frames simulated.
    pub frames: u32,
    /// Frames whose producer and consumer work went through the user queues.
    pub user_frames: u64,
    /// 64 KiB holes punched into the stream buffer while a user-queue job was reading it.
    pub stream_holes: u64,
    /// Stream buffers allocated (a fresh one every 16 frames, so that blocks split again).
    pub stream_buffers: u64,
    /// Times userspace found a ring full and waited for the firmware.
    pub ring_waits: u64,
}

/// The native syncobjs and queues of the user-submission part.
#[derive(Clone, Copy, Debug)]
struct UserPart {
    /// Set by an XGS signal after each frame's residency bind (64-bit).
    s_bind: usize,
    /// Set by the producer when its frame is done (32-bit); XGS waits on it.
    s_post: usize,
    /// Frames produced but not yet composited (64-bit; producer adds 1, consumer adds -1).
    s_pending: usize,
    /// Jobs the producer ran (32-bit, add).
    s_count: usize,
    producer: usize,
    consumer: usize,
}

/// The scenario's state.
pub struct Scenario {
    /// The world.
    pub world: World,
    /// What happened.
    pub story: Story,
    rng: Rng,
    p: Params,
    pool_bo: u32,
    shared_bo: u32,
    free_tiles: Vec<u64>,
    resident: BTreeMap<u64, u64>,
    buffers: Vec<Buffer>,
    next_va: Vec<u64>,
    last_sample: Option<SwFence>,
    last_xgs: Option<SwFence>,
    user: UserPart,
    /// The stream buffer: (object, GPU address).
    stream: Option<(u32, u64)>,
    host_late: Vec<(u32, u64, SwFence)>,
    game: usize,
    comp: usize,
    q_game: usize,
    q_churn: usize,
    q_comp: usize,
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario")
            .field("story", &self.story)
            .finish_non_exhaustive()
    }
}

impl Scenario {
    /// Sets the machine up: VMs, queues, the tile pool, the shared object.
    ///
    /// # Errors
    ///
    /// A setup step failed.
    pub fn new(p: Params) -> Result<Self, WorldError> {
        let mut w = World::new(p.mem_mib, p.slots);
        if p.record {
            w.record();
        }
        let game = w.add_vm("game", Policy::Fifo, true, 2)?;
        let comp = w.add_vm("compositor", Policy::Fifo, false, 1)?;
        for i in 0..p.churn_vms.max(1) {
            let pol = if i % 2 == 0 {
                Policy::RangeOrdered
            } else {
                Policy::Fifo
            };
            w.add_vm(
                if i % 2 == 0 { "compute" } else { "video" },
                pol,
                i % 2 == 1,
                2,
            )?;
        }
        let q_game = w.add_gpu_queue();
        let q_churn = w.add_gpu_queue();
        let q_comp = w.add_gpu_queue();
        let pool_bo = w.create_bo(POOL_TILES * TILE, Contiguity::Tiles)?;
        let shared_bo = w.create_bo(SHARED_SIZE, Contiguity::Huge)?;
        w.bind_sync(
            game,
            &[World::map_op(
                0x20_0000_0000,
                SHARED_SIZE,
                shared_bo,
                0,
                false,
            )],
            BindKind::Churn,
        )?;
        w.bind_sync(
            comp,
            &[World::map_op(
                0x20_0000_0000,
                SHARED_SIZE,
                shared_bo,
                0,
                true,
            )],
            BindKind::Churn,
        )?;
        // Native syncobjs: one page, mapped read-write by the game and the compositor.
        let sync_bo = w.create_bo(4096, Contiguity::Scattered)?;
        for vm in [game, comp] {
            w.bind_sync(
                vm,
                &[World::map_op(SYNC_VA, 4096, sync_bo, 0, false)],
                BindKind::Churn,
            )?;
        }
        let views = [(game, SYNC_VA), (comp, SYNC_VA)];
        let at = |i: u64| {
            views
                .iter()
                .map(|&(v, va)| (v, va + 16 * i))
                .collect::<Vec<_>>()
        };
        let user = UserPart {
            s_bind: w.native_sync(sync_bo, 0, true, at(0)),
            s_post: w.native_sync(sync_bo, 16, false, at(1)),
            s_pending: w.native_sync(sync_bo, 32, true, at(2)),
            s_count: w.native_sync(sync_bo, 48, false, at(3)),
            producer: w.add_user_queue(game, 16),
            consumer: w.add_user_queue(comp, 8),
        };
        let n = w.vms.len();
        Ok(Self {
            world: w,
            story: Story::default(),
            rng: Rng::new(p.seed),
            pool_bo,
            shared_bo,
            free_tiles: (0..POOL_TILES).rev().collect(),
            resident: BTreeMap::new(),
            buffers: Vec::new(),
            next_va: vec![0x10_0000_0000; n],
            last_sample: None,
            last_xgs: None,
            user,
            stream: None,
            host_late: Vec::new(),
            game,
            comp,
            q_game,
            q_churn,
            q_comp,
            p,
        })
    }

    /// Runs every frame, then drains.
    ///
    /// # Errors
    ///
    /// A scenario step failed in a way the scenario does not expect.
    pub fn run(&mut self, mut progress: impl FnMut(u32, u32)) -> Result<(), WorldError> {
        for f in 0..self.p.frames {
            self.frame(f)?;
            for s in 0..STEPS_PER_FRAME {
                self.tick();
                if s == 1 {
                    self.mid_frame(f)?;
                }
            }
            progress(f + 1, self.p.frames);
        }
        for (_, _, f) in std::mem::take(&mut self.host_late) {
            self.world.signal_host(&f, Ok(()));
        }
        self.world.drain(STEP_US, 1_000_000);
        self.story.frames = self.p.frames;
        Ok(())
    }

    /// Signals the host fences that are due.
    fn host_signals(&mut self) {
        let now = self.world.now;
        let mut i = 0;
        while i < self.host_late.len() {
            if self.host_late[i].1 <= now {
                let (_, _, fence) = self.host_late.swap_remove(i);
                self.world.signal_host(&fence, Ok(()));
            } else {
                i += 1;
            }
        }
    }

    /// One step of the world, the host signalling what is due first (the scenario's every
    /// step goes through here, the shrinker's and a waiting userspace's too).
    fn tick(&mut self) {
        self.host_signals();
        self.world.step(STEP_US);
    }

    fn frame(&mut self, f: u32) -> Result<(), WorldError> {
        self.host_signals();
        self.sparse(f)?;
        self.shared(f);
        self.churn(f)?;
        if f % 25 == 5 {
            self.blocked(f)?;
        }
        if f == 40 {
            // A bind whose in-fence user space never signals: it must fail by timeout.
            let never = self.world.host_fence(999, 0);
            let ops = [BindOp::SyncOnly];
            self.world
                .bind_async(2, 1, &ops, vec![never], None, BindKind::Blocked)?;
            self.story.blocked += 1;
        }
        Ok(())
    }

    fn sparse(&mut self, f: u32) -> Result<(), WorldError> {
        let mut ops = Vec::new();
        // Tiles leaving residency: unbound by a second job once the frame's user-queue work,
        // which still reads them, is done; their pool slots are reused from the next frame.
        let mut unmaps = Vec::new();
        let mut gone = Vec::new();
        let unbind = if self.resident.len() > 700 {
            self.p.tiles_per_frame
        } else {
            self.p.tiles_per_frame / 3
        };
        for _ in 0..unbind {
            if self.resident.is_empty() {
                break;
            }
            let k = self.rng.below(self.resident.len() as u64);
            let Some((&tile, &slot)) = self.resident.iter().nth(usize::try_from(k).unwrap_or(0))
            else {
                break;
            };
            self.resident.remove(&tile);
            gone.push((tile, slot));
            unmaps.push(BindOp::Unmap {
                va: IMAGE + tile * TILE,
                len: TILE,
            });
            self.story.tiles.1 += 1;
        }
        for _ in 0..self.p.tiles_per_frame {
            let Some(slot) = self.free_tiles.pop() else {
                break;
            };
            let tile = self.rng.below(IMAGE_TILES);
            if self.resident.contains_key(&tile) || gone.iter().any(|&(t, _)| t == tile) {
                self.free_tiles.push(slot);
                continue;
            }
            self.resident.insert(tile, slot);
            ops.push(World::map_op(
                IMAGE + tile * TILE,
                TILE,
                self.pool_bo,
                slot * TILE,
                false,
            ));
            self.story.tiles.0 += 1;
        }
        self.free_tiles.extend(gone.iter().map(|&(_, slot)| slot));
        self.story.peak_resident = self.story.peak_resident.max(self.resident.len() as u64);
        // The update waits on the previous frame's sampling job (and, queued behind the
        // previous frame's unbind job, on its user-queue work).
        let waits: Vec<SwFence> = self.last_sample.iter().cloned().collect();
        let bind = self.world.bind_async(
            self.game,
            0,
            &ops,
            waits,
            Some((1, u64::from(f) + 1)),
            BindKind::Sparse,
        )?;
        // The frame's sampling job waits on the residency update through the timeline point.
        let point = self.world.point(1, u64::from(f) + 1)?;
        debug_assert!(point.status() == bind.status());
        let mut acc = Vec::new();
        let tiles: Vec<u64> = self.resident.keys().copied().collect();
        for _ in 0..self.p.samples {
            let Some(&t) =
                tiles.get(usize::try_from(self.rng.below(tiles.len() as u64)).unwrap_or(0))
            else {
                break;
            };
            let va = IMAGE + t * TILE + (self.rng.below(TILE) & !7);
            let write = self.rng.pct(25).then(|| self.rng.next_u64());
            acc.push(Access { va, write });
        }
        for _ in 0..4 {
            // Non-resident tiles: the shader's residency probe faults (expected).
            let t = self.rng.below(IMAGE_TILES);
            if !self.resident.contains_key(&t) {
                acc.push(Access {
                    va: IMAGE + t * TILE,
                    write: None,
                });
            }
        }
        let s = self.world.gpu_job(self.q_game, self.game, vec![point], acc);
        self.last_sample = Some(s);
        let leaving: Vec<u64> = gone.iter().map(|&(t, _)| IMAGE + t * TILE).collect();
        self.user_frame(f, bind, &leaving)?;
        let cycle = self.world.faults.fence_cycle && f == 30;
        if !unmaps.is_empty() || cycle {
            if unmaps.is_empty() {
                unmaps.push(BindOp::SyncOnly);
            }
            let waits: Vec<SwFence> = self.last_xgs.take().into_iter().collect();
            let unbind =
                self.world
                    .bind_async(self.game, 0, &unmaps, waits, None, BindKind::Sparse)?;
            if cycle {
                // The fault switch: what releases the producer now follows the unbind job,
                // which waits (through the XGS wait) on what the producer does next.
                self.world.xgs_signal(
                    vec![unbind],
                    self.user.s_bind,
                    SyncOp::Set(u64::from(f) + 2),
                );
            }
        }
        Ok(())
    }

    /// Userspace writes into a ring, stepping the world while the ring is full.
    fn push(&mut self, q: usize, cmds: Vec<UserCmd>) {
        for cmd in cmds {
            let mut cmd = cmd;
            let mut tries = 0;
            while let Err(c) = self.world.uq_push(q, cmd) {
                if self.world.uq_faulted(q) || tries >= 100 {
                    break;
                }
                cmd = c;
                self.story.ring_waits += 1;
                tries += 1;
                self.tick();
            }
        }
        self.world.uq_kick(q);
    }

    /// The frame's user submission. Kernel to user: an XGS signal sets `s_bind` once the
    /// residency bind has run; the producer waits on it (and on the pacing count), reads the
    /// stream buffer and the tiles leaving residency through the game VM over several steps,
    /// then counts and sets `s_post`. User to kernel: an XGS wait on `s_post` is what the
    /// frame's unbind job waits on (and, behind it in the queue, the next frame's bind). The
    /// consumer (compositor VM) waits on `s_post`, reads the shared object, decrements the count.
    fn user_frame(&mut self, f: u32, bind: SwFence, leaving: &[u64]) -> Result<(), WorldError> {
        let u = self.user;
        let fv = u64::from(f);
        if f.is_multiple_of(16) && self.world.uq_space(u.producer) == 16 {
            self.new_stream(f)?;
        }
        self.world
            .xgs_signal(vec![bind], u.s_bind, SyncOp::Set(fv + 1));
        let mut acc = Vec::new();
        if let Some((_, va)) = self.stream {
            let blk = va + u64::from((f / 4) % 4) * BLOCK;
            for _ in 0..48 {
                let a = blk + (self.rng.below(BLOCK / 2) & !7);
                let write = self.rng.pct(30).then(|| self.rng.next_u64());
                acc.push(Access { va: a, write });
            }
        }
        // A last look at tiles leaving residency (their unbind waits for this job).
        for &t in leaving.iter().take(8) {
            acc.push(Access {
                va: t + (self.rng.below(TILE) & !7),
                write: None,
            });
        }
        // With the fault switch, the producer waits for a signal that follows this frame's
        // unbind job before it sets what that job waits on: a cycle only the XGS timeout
        // breaks.
        let want = if self.world.faults.fence_cycle && f == 30 {
            fv + 1
        } else {
            fv
        };
        self.push(
            u.producer,
            vec![
                UserCmd::Wait {
                    sync: u.s_bind,
                    cond: Cond::Gt(want),
                },
                UserCmd::Wait {
                    sync: u.s_pending,
                    cond: Cond::Le(1),
                },
                UserCmd::Run {
                    accesses: acc,
                    per_step: 24,
                },
                UserCmd::Sync {
                    sync: u.s_count,
                    op: SyncOp::Add(1),
                },
                UserCmd::Sync {
                    sync: u.s_pending,
                    op: SyncOp::Add(1),
                },
                UserCmd::Sync {
                    sync: u.s_post,
                    op: SyncOp::Set(fv + 1),
                },
            ],
        );
        let reads = (0..16)
            .map(|_| Access {
                va: 0x20_0000_0000 + (self.rng.below(SHARED_SIZE) & !7),
                write: None,
            })
            .collect();
        self.push(
            u.consumer,
            vec![
                UserCmd::Wait {
                    sync: u.s_post,
                    cond: Cond::Gt(fv),
                },
                UserCmd::Run {
                    accesses: reads,
                    per_step: 8,
                },
                UserCmd::Sync {
                    sync: u.s_pending,
                    op: SyncOp::Add(u64::MAX),
                },
            ],
        );
        self.last_xgs = Some(self.world.xgs_wait(u.s_post, Cond::Gt(fv)));
        self.story.user_frames += 1;
        Ok(())
    }

    /// A fresh 8 MiB block-backed stream buffer for the producer (the old one is unmapped and
    /// closed; the producer's ring is empty, so no job reads it).
    fn new_stream(&mut self, f: u32) -> Result<(), WorldError> {
        if let Some((bo, va)) = self.stream.take() {
            self.world.bind_sync(
                self.game,
                &[BindOp::Unmap {
                    va,
                    len: STREAM_SIZE,
                }],
                BindKind::Churn,
            )?;
            self.world.close_bo(bo);
        }
        let Some(bo) = self.try_bo(STREAM_SIZE, Contiguity::Huge)? else {
            return Ok(());
        };
        let va = STREAM_VA + u64::from(f / 16) * (2 * STREAM_SIZE);
        self.world.bind_sync(
            self.game,
            &[World::map_op(va, STREAM_SIZE, bo, 0, false)],
            BindKind::Churn,
        )?;
        self.stream = Some((bo, va));
        self.story.stream_buffers += 1;
        Ok(())
    }

    /// Halfway through a frame, on every fourth frame, userspace unbinds (async) a 64 KiB tile in the
    /// half of a stream-buffer block that the producer's running job is not reading: the
    /// block splits while the GPU reads its other half, which the lock region must stall.
    fn mid_frame(&mut self, f: u32) -> Result<(), WorldError> {
        let Some((_, va)) = self.stream else {
            return Ok(());
        };
        if f % 4 != 1 {
            return Ok(());
        }
        let blk = va + u64::from((f / 4) % 4) * BLOCK;
        let off = BLOCK / 2 + (u64::from(f / 16) % 16) * TILE;
        // Async on the second queue: it runs at the next step, with the job still running.
        self.world.bind_async(
            self.game,
            1,
            &[BindOp::Unmap {
                va: blk + off,
                len: TILE,
            }],
            vec![],
            None,
            BindKind::Sparse,
        )?;
        self.story.stream_holes += 1;
        Ok(())
    }

    fn shared(&mut self, f: u32) {
        let mut w = Vec::new();
        let mut r = Vec::new();
        for _ in 0..8 {
            let va = 0x20_0000_0000 + (self.rng.below(SHARED_SIZE) & !7);
            w.push(Access {
                va,
                write: Some(self.rng.next_u64()),
            });
            r.push(Access { va, write: None });
        }
        // The compositor tries to write its read-only view once: a permission fault.
        r.push(Access {
            va: 0x20_0000_0000,
            write: Some(1),
        });
        if f == 1 {
            // Both VMs map it: its creator closes the handle, the mappings keep it alive.
            self.world.close_bo(self.shared_bo);
        }
        let wf = self.world.gpu_job(self.q_game, self.game, vec![], w);
        self.world.gpu_job(self.q_comp, self.comp, vec![wf], r);
    }

    fn churn_vm(&mut self) -> usize {
        let first = 2;
        let n = self.world.vms.len() - first;
        // The game VM churns too (Fifo, lock regions).
        let k = self.rng.below(n as u64 + 1);
        if k == n as u64 {
            self.game
        } else {
            first + usize::try_from(k).unwrap_or(0)
        }
    }

    fn alloc_va(&mut self, vm: usize, size: u64, unaligned: bool) -> u64 {
        let base =
            self.next_va[vm].next_multiple_of(2 << 20) + if unaligned { 64 << 10 } else { 0 };
        self.next_va[vm] = base + size + (2 << 20);
        base
    }

    fn create_buffer(&mut self, f: u32, sync: bool) -> Result<Option<usize>, WorldError> {
        let vm = self.churn_vm();
        let (size, how) = match self.rng.below(4) {
            0 => (256 << 10, Contiguity::Scattered),
            1 => (1 << 20, Contiguity::Scattered),
            2 => (4 << 20, Contiguity::Huge),
            _ => (8 << 20, Contiguity::Huge),
        };
        let Some(bo) = self.try_bo(size, how)? else {
            return Ok(None);
        };
        let unaligned = self.rng.pct(20);
        let va = self.alloc_va(vm, size, unaligned);
        let ops = [World::map_op(va, size, bo, 0, false)];
        let bound = if sync {
            self.world.bind_sync(vm, &ops, BindKind::Churn)?
        } else {
            self.world
                .bind_async(vm, 0, &ops, vec![], None, BindKind::Churn)?
        };
        self.story.buffers.0 += 1;
        self.buffers.push(Buffer {
            vm,
            bo,
            va,
            size,
            how,
            holes: BTreeSet::new(),
            evicted: false,
            last_use: f,
            pending: vec![bound],
        });
        Ok(Some(self.buffers.len() - 1))
    }

    fn churn(&mut self, f: u32) -> Result<(), WorldError> {
        if self.rng.pct(45) {
            let sync = self.rng.pct(50);
            self.create_buffer(f, sync)?;
        }
        // GPU work on a few buffers (revalidating evicted ones first).
        for _ in 0..3 {
            if self.buffers.is_empty() {
                break;
            }
            let i = usize::try_from(self.rng.below(self.buffers.len() as u64)).unwrap_or(0);
            if self.buffers[i].evicted && !self.revalidate(i)? {
                continue;
            }
            self.buffers[i].last_use = f;
            let b = &self.buffers[i];
            let (vm, va, size) = (b.vm, b.va, b.size);
            let mut acc = Vec::new();
            for _ in 0..16 {
                let a = va + (self.rng.below(size) & !7);
                let write = self.rng.pct(40).then(|| self.rng.next_u64());
                acc.push(Access { va: a, write });
            }
            self.world.gpu_job(self.q_churn, vm, vec![], acc);
        }
        // Punch a 64 KiB hole (splits a 2 MiB block where the buffer has one).
        if self.rng.pct(20) && !self.buffers.is_empty() {
            let i = usize::try_from(self.rng.below(self.buffers.len() as u64)).unwrap_or(0);
            let b = &mut self.buffers[i];
            if !b.evicted {
                let off = (self.rng.below(b.size / TILE)) * TILE;
                if b.holes.insert(off) {
                    let (vm, va) = (b.vm, b.va + off);
                    let unbound = self.world.bind_sync(
                        vm,
                        &[BindOp::Unmap { va, len: TILE }],
                        BindKind::Churn,
                    )?;
                    self.buffers[i].pending.push(unbound);
                    self.story.holes += 1;
                }
            }
        }
        // Retire old buffers.
        if self.buffers.len() > 20 || (self.rng.pct(15) && !self.buffers.is_empty()) {
            let i = usize::try_from(self.rng.below(self.buffers.len() as u64)).unwrap_or(0);
            let b = self.buffers.swap_remove(i);
            if !b.evicted {
                let ops = [BindOp::Unmap {
                    va: b.va,
                    len: b.size,
                }];
                if self.rng.pct(50) {
                    self.world.bind_sync(b.vm, &ops, BindKind::Churn)?;
                } else {
                    self.world
                        .bind_async(b.vm, 0, &ops, vec![], None, BindKind::Churn)?;
                }
            }
            self.world.close_bo(b.bo);
            self.story.buffers.1 += 1;
        }
        Ok(())
    }

    /// A job on queue 1 blocked on a host fence signalled three frames later, with synchronous
    /// binds on the same VM meanwhile (Fifo: they wait; RangeOrdered: disjoint ones run).
    fn blocked(&mut self, f: u32) -> Result<(), WorldError> {
        for vm in [self.game, 2] {
            let h = 100 + f;
            let fence = self.world.host_fence(h, 0);
            let due = self.world.now + 3 * STEPS_PER_FRAME * STEP_US;
            self.host_late.push((h, due, fence.clone()));
            let Some(bo) = self.try_bo(1 << 20, Contiguity::Scattered)? else {
                continue;
            };
            let va = self.alloc_va(vm, 1 << 20, false);
            let bound = self.world.bind_async(
                vm,
                1,
                &[World::map_op(va, 1 << 20, bo, 0, false)],
                vec![fence],
                None,
                BindKind::Blocked,
            )?;
            self.story.blocked += 1;
            self.buffers.push(Buffer {
                vm,
                bo,
                va,
                size: 1 << 20,
                how: Contiguity::Scattered,
                holes: BTreeSet::new(),
                evicted: false,
                last_use: f,
                pending: vec![bound],
            });
            // A synchronous bind right behind it.
            let Some(bo2) = self.try_bo(2 << 20, Contiguity::Huge)? else {
                continue;
            };
            let va2 = self.alloc_va(vm, 2 << 20, false);
            let bound = self.world.bind_sync(
                vm,
                &[World::map_op(va2, 2 << 20, bo2, 0, false)],
                BindKind::Churn,
            )?;
            self.buffers.push(Buffer {
                vm,
                bo: bo2,
                va: va2,
                size: 2 << 20,
                how: Contiguity::Huge,
                holes: BTreeSet::new(),
                evicted: false,
                last_use: f,
                pending: vec![bound],
            });
        }
        Ok(())
    }

    fn try_bo(&mut self, size: u64, how: Contiguity) -> Result<Option<u32>, WorldError> {
        let free = self.world.phys.borrow().free_frames() * 4096;
        if free < size + (24 << 20) {
            self.shrink(size + (24 << 20));
        }
        match self.world.create_bo(size, how) {
            Ok(b) => Ok(Some(b)),
            Err(WorldError::NoMemory(_)) => {
                self.story.oom_skips += 1;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The shrinker: evicts least recently used buffers until `want` bytes are free (unmaps
    /// every mapping found through the object's link, drops the pages).
    fn shrink(&mut self, want: u64) {
        loop {
            let free = self.world.phys.borrow().free_frames() * 4096;
            if free >= want {
                return;
            }
            let Some((i, _)) = self
                .buffers
                .iter_mut()
                .enumerate()
                .filter_map(|(i, b)| (!b.evicted && b.settled()).then_some((i, b.last_use)))
                .min_by_key(|&(_, last_use)| last_use)
            else {
                return;
            };
            let (vm, bo) = (self.buffers[i].vm, self.buffers[i].bo);
            let ops: Vec<BindOp> = self
                .world
                .mappings_of(vm, bo)
                .into_iter()
                .map(|(va, len)| BindOp::Unmap { va, len })
                .collect();
            if !ops.is_empty() {
                match self.world.bind_sync(vm, &ops, BindKind::Evict) {
                    Ok(unbound) => self.buffers[i].pending.push(unbound),
                    Err(_) => return,
                }
            }
            // Let the sync unmap run (it may wait behind queued binds under Fifo).
            let mut guard = 0;
            while !self.world.mappings_of(vm, bo).is_empty() && guard < 200 {
                self.tick();
                guard += 1;
            }
            self.world.close_evicted(bo);
            self.buffers[i].evicted = true;
            self.story.evicted += 1;
            // Run the cleanups that drop the last references (freeing the pages).
            self.world.cleanup_all();
        }
    }

    /// Revalidation: new pages (contents swapped back in), mapped again where they were.
    fn revalidate(&mut self, i: usize) -> Result<bool, WorldError> {
        let (size, how) = (self.buffers[i].size, self.buffers[i].how);
        let free = self.world.phys.borrow().free_frames() * 4096;
        if free < size + (24 << 20) {
            self.shrink(size + (24 << 20));
        }
        let old = self.buffers[i].bo;
        if !self.buffers[i].settled() || !self.world.mappings_of(self.buffers[i].vm, old).is_empty()
        {
            // The eviction's unmap has not run yet (the shrinker stopped waiting for it).
            return Ok(false);
        }
        let Ok(bo) = self.world.swap_in(old, size, how) else {
            self.story.oom_skips += 1;
            return Ok(false);
        };
        let b = &self.buffers[i];
        let mut ops = Vec::new();
        let mut off = 0;
        // Map around the holes the buffer had.
        while off < b.size {
            if b.holes.contains(&off) {
                off += TILE;
                continue;
            }
            let mut end = off;
            while end < b.size && !b.holes.contains(&end) {
                end += TILE;
            }
            ops.push(World::map_op(b.va + off, end - off, bo, off, false));
            off = end;
        }
        let vm = b.vm;
        let bound = self.world.bind_sync(vm, &ops, BindKind::Revalidate)?;
        self.buffers[i].pending.push(bound);
        self.buffers[i].evicted = false;
        self.story.revalidated += 1;
        Ok(true)
    }
}
