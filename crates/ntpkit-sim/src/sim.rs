//! The discrete-event loop.
//!
//! Virtual time is integer nanoseconds of true time since the start of the run. Events sit in a
//! radix heap ([`EventQueue`]) ordered by (time, sequence number), so simultaneous events run in
//! the order they were scheduled and a run is a pure function of the scenario and the seed.
//!
//! Each node is driven exactly as the daemon drives the core (the call contract on
//! [`SyncSystem`]): its one pending timer is `poll_timeout`; after every input the driver drains
//! `poll_transmit` (reading the node's clock just before each), then `poll_clock_command`
//! (applied to the node's clock at that instant), then `poll_event`. Requests are the core's own
//! bytes; the server node answers them with the core's [`Responder`] at its clock's reading and
//! the reply bytes are handed to `handle_reply` — every packet crosses `ntpkit-wire` both ways.
//! The node's monotonic time is true time (the daemon uses the OS monotonic clock).

use crate::clock::SimClock;
use crate::coverage::BoundCounters;
use crate::nts::{unix_secs, InFlightSlab, NtsCounters, NtsLink, NtsServer};
use crate::queue::EventQueue;
use crate::rng::{exponential, normal, stream, uniform, Rng, StreamKind};
use crate::scenario::{Direction, Distribution, Scenario};
use ntpkit_core::sync::{BoundStatus, DisciplineConfig, SystemConfig};
use ntpkit_core::{
    measure, ClockCommand, MonoTime, Responder, Response, ServedState, SourceConfig, SourceId,
    SyncSystem,
};
use ntpkit_wire::{stamp_transmit, Header, RefId, HEADER_LEN};
use std::fmt::Write as _;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};

/// Local index of a node absent from a shard.
const ABSENT: u32 = u32::MAX;

/// Packet slots kept when the slab empties (see `Sim::free_packet`).
const KEPT_SLOTS: usize = 1024;

/// Precision (log2 s) the simulated reference clocks advertise.
const REFERENCE_PRECISION: i8 = -20;

/// `Packet::nts` of a packet without NTS.
const NO_NTS: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Packet {
    bytes: [u8; HEADER_LEN],
    /// The client's clock reading when it sent the request (T1), Unix ns. The request carries
    /// a random cookie instead, as the daemon's do.
    t1: i64,
    /// The client's count of clock steps at send time (a step in flight spoils the sample).
    steps: u32,
    /// The link it travels on.
    link: u32,
    /// Slot of its NTS datagram in `Sim::nts_packets` ([`NO_NTS`]: plain NTP). `bytes` then
    /// holds the plain header: the core's request, the responder's reply, and, once the reply
    /// authenticated, its header.
    nts: u32,
}

/// What happens at an event. Packets in flight live in a slab (`Sim::packets`) and events
/// carry their slot, which keeps a queued event at 24 bytes: the heap moves less memory.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// A node's `poll_timeout` deadline.
    Timer(u32),
    /// A request arrives at its link's server (packet slot).
    Request(u32),
    /// A link's server sends its reply after processing (packet slot).
    Transmit(u32),
    /// A reply arrives at its link's client (packet slot).
    Reply(u32),
    /// Sample every node's true error.
    Sample,
    /// A key exchange of an NTS source ends or is retried (link).
    KeyExchange(u32),
    /// A scheduled disturbance of a node's clock (index into `Sim::disturbances`).
    Step(u32),
}

/// One (client, source) path with its own random stream per direction.
#[derive(Debug)]
struct Link {
    client: u32,
    server: u32,
    source: u32,
    profile: u16,
    request_rng: Rng,
    reply_rng: Rng,
    /// The source's NTS state, if it runs NTS.
    nts: Option<Box<NtsLink>>,
}

/// Running statistics of one node. A client's own counts are `u32` (a simulation holds one per
/// client, and 4 billion exchanges is 8,000 years at 64 s); what a server served is the sum
/// over all its clients, so `u64`.
#[derive(Clone, Debug, Default)]
pub struct NodeCounters {
    /// Requests sent.
    pub sent: u32,
    /// Replies received.
    pub received: u32,
    /// Requests answered as a server.
    pub served: u64,
    /// Clock steps commanded by the core.
    pub steps: u32,
    /// Sum of |measured offset| over replies used, seconds.
    pub correction_sum: f64,
    /// Replies whose offset was measured (no step in flight).
    pub corrections: u32,
    /// Samples after the statistics start.
    pub n: u32,
    /// Sums of the true error (s) and its square, and the max |error|.
    pub err: (f64, f64, f64),
    /// Same for the frequency error (ppm).
    pub freq: (f64, f64, f64),
    /// Time of the first sample after the last one at or above the threshold.
    pub synced_since: Option<i64>,
    /// True error (s) and frequency error (ppm) at the last sample.
    pub last: (f64, f64),
    /// NTS, over the node's NTS sources.
    pub nts: NtsCounters,
    /// Coverage of the error bound, from the node's first synchronized sample on.
    pub bound: Option<Box<BoundCounters>>,
}

/// A node present in this simulation (all of them, or one shard's).
struct Node {
    /// Index in the scenario.
    index: u32,
    clock: SimClock,
    clock_rng: Rng,
    core_rng: Rng,
    sync: Option<SyncSystem>,
    reference: Option<u8>,
    /// A reference whose clock is a pure function of true time (no wander, no scheduled
    /// steps): its requests are answered when sent (see [`Sim::send_request`]).
    answers_at_once: bool,
    /// Link index of source 0; source k uses link `first_link + k`.
    first_link: u32,
    /// Time of the pending timer (i64::MAX: none).
    timer: i64,
    /// Times of some `Timer` events of this node still in the queue (i64::MAX: free slot).
    /// The first queued event at the pending timer's time fires it and later ones are stale,
    /// so re-arming at a time already queued needs no new event.
    queued: [i64; 2],
    steps: u32,
    counters: NodeCounters,
    /// Its cookie masters, if some NTS source names it.
    nts: Option<Box<NtsServer>>,
}

/// What to record besides the statistics.
#[derive(Default)]
pub struct Trace<'a> {
    /// CSV time series sink.
    pub csv: Option<&'a mut dyn Write>,
    /// Nodes whose true error is kept for plotting.
    pub plot_nodes: Vec<usize>,
}

impl std::fmt::Debug for Trace<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trace")
            .field("csv", &self.csv.is_some())
            .field("plot_nodes", &self.plot_nodes)
            .finish()
    }
}

/// The result of one run.
#[derive(Debug)]
pub struct Outcome {
    /// Scenario index of each entry of the per-node vectors (all nodes in order, except for
    /// one shard's outcome before merging).
    index: Vec<u32>,
    /// Per node, in scenario order.
    pub counters: Vec<NodeCounters>,
    /// Stratum each node serves at the end (16 = unsynchronized).
    pub stratum: Vec<u8>,
    /// Discipline updates per node.
    pub updates: Vec<u64>,
    /// Exchanges completed (replies delivered).
    pub exchanges: u64,
    /// Events processed.
    pub events: u64,
    /// Events every shard processes (samples, steps of reference clocks): counted once when
    /// shards are merged.
    shared_events: u64,
    /// Packets lost on links (loss or outage).
    pub lost: u64,
    /// Plotted series: (time s, true error s) per entry of `Trace::plot_nodes`.
    pub series: Vec<Vec<(f64, f64)>>,
}

/// A simulation in progress.
pub struct Sim<'s, 't> {
    sc: &'s Scenario,
    seed: u64,
    duration: i64,
    now: i64,
    seq: u64,
    queue: EventQueue<Kind>,
    /// Answers every server's requests (it holds nothing per server but counters, which the
    /// nodes' own `served` counts replace).
    responder: Responder,
    packets: Vec<Packet>,
    free_packets: Vec<u32>,
    /// NTS datagrams of the packets in flight that carry one.
    nts_packets: InFlightSlab,
    /// Scheduled clock disturbances: (node, index into its scenario steps).
    disturbances: Vec<(u32, u32)>,
    nodes: Vec<Node>,
    links: Vec<Link>,
    trace: Trace<'t>,
    series: Vec<Vec<(f64, f64)>>,
    plot_index: Vec<Option<usize>>,
    exchanges: u64,
    events: u64,
    shared_events: u64,
    lost: u64,
    line: String,
}

impl std::fmt::Debug for Sim<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("scenario", &self.sc.name)
            .field("now", &self.now)
            .finish()
    }
}

/// The address a node is known by (its reference ID downstream): 10.x.y.z from its index.
pub fn node_address(i: usize) -> IpAddr {
    let n = i as u32 + 1;
    IpAddr::V4(Ipv4Addr::new(10, (n >> 16) as u8, (n >> 8) as u8, n as u8))
}

impl<'s, 't> Sim<'s, 't> {
    /// Builds every node and link at t = 0 with `seed` (overriding the scenario's) and
    /// `duration` ns.
    pub fn new(sc: &'s Scenario, seed: u64, duration: i64, trace: Trace<'t>) -> Self {
        Self::new_shard(sc, seed, duration, trace, |_| true)
    }

    /// Like [`Sim::new`], but only the nodes for which `active` is true are built and driven;
    /// the others do not exist in this simulation, except that every random stream and link
    /// number is the one it has in the whole run. Used by [`simulate_sharded`], which only
    /// passes active sets that do not interact with the rest.
    fn new_shard(
        sc: &'s Scenario,
        seed: u64,
        duration: i64,
        trace: Trace<'t>,
        active: impl Fn(usize) -> bool,
    ) -> Self {
        // Local index of every node present here, in scenario order.
        let mut local = vec![ABSENT; sc.nodes.len()];
        let mut present = 0u32;
        for (i, slot) in local.iter_mut().enumerate() {
            if active(i) {
                *slot = present;
                present += 1;
            }
        }
        let mut nodes = Vec::with_capacity(present as usize);
        let link_count = sc
            .nodes
            .iter()
            .enumerate()
            .filter(|&(i, n)| local[i] != ABSENT && n.reference.is_none())
            .map(|(_, n)| n.sources.len())
            .sum();
        let mut links = Vec::with_capacity(link_count);
        // Number of the next link in the whole run: it seeds the link's streams.
        let mut global_link = 0u64;
        for (i, spec) in sc.nodes.iter().enumerate() {
            let first_global_link = global_link;
            if spec.reference.is_none() {
                global_link += spec.sources.len() as u64;
            }
            if local[i] == ABSENT {
                continue;
            }
            let mut clock_rng = stream(seed, StreamKind::Clock, i as u64);
            let mut core_rng = stream(seed, StreamKind::Core, i as u64);
            let (off, off_spread) = spec.offset;
            let offset = if off_spread > 0 {
                off + ((2.0 * uniform(&mut clock_rng) - 1.0) * off_spread as f64) as i64
            } else {
                off
            };
            let (ppm, ppm_spread) = spec.frequency_ppm;
            let ppm = if ppm_spread > 0.0 {
                ppm + (2.0 * uniform(&mut clock_rng) - 1.0) * ppm_spread
            } else {
                ppm
            };
            let mut clock = SimClock::new(offset, ppm, spec.wander);
            // Reading at t = 0 integrates no wander: it draws nothing from the stream. (A node
            // that starts later gets its first real reading when it starts.)
            let clock_at_start = clock.read(0, &mut clock_rng);
            let first_link = links.len() as u32;
            let sync = spec.reference.is_none().then(|| {
                let mut cfg = SystemConfig {
                    discipline: DisciplineConfig {
                        mode: spec.discipline,
                        ..DisciplineConfig::default()
                    },
                    ..SystemConfig::default()
                };
                if let Some(m) = spec.minsources {
                    cfg.minsources = m;
                }
                if let Some(s) = spec.step_threshold {
                    cfg.discipline.step_threshold = s;
                }
                if let Some(m) = spec.max_slew_ppm {
                    cfg.discipline.max_slew_ppm = m;
                }
                let mut sys = SyncSystem::new(cfg, MonoTime(spec.start), clock_at_start);
                for (k, src) in spec.sources.iter().enumerate() {
                    sys.add_source(
                        std::net::SocketAddr::new(node_address(src.server), 123),
                        SourceConfig {
                            minpoll: src.poll.0,
                            maxpoll: src.poll.1,
                            iburst: src.iburst,
                        },
                        MonoTime(spec.start),
                        &mut core_rng,
                    );
                    let server = local[src.server];
                    assert!(server != ABSENT, "a shard holds its clients' servers");
                    let index = first_global_link + k as u64;
                    links.push(Link {
                        client: local[i],
                        server,
                        source: k as u32,
                        profile: src.profile as u16,
                        request_rng: stream(seed, StreamKind::Request, index),
                        reply_rng: stream(seed, StreamKind::Reply, index),
                        nts: src
                            .nts
                            .then(|| Box::new(NtsLink::new(seed, index, src.nts_tamper))),
                    });
                }
                sys
            });
            nodes.push(Node {
                index: i as u32,
                clock,
                clock_rng,
                core_rng,
                sync,
                reference: spec.reference,
                answers_at_once: spec.reference.is_some()
                    && spec.wander == 0.0
                    && spec.steps.is_empty(),
                first_link,
                timer: i64::MAX,
                queued: [i64::MAX; 2],
                steps: 0,
                counters: NodeCounters::default(),
                nts: spec
                    .nts_server
                    .then(|| Box::new(NtsServer::new(seed, i, &spec.nts_master_changes))),
            });
        }
        // Indexed by node only when some node is plotted: no memory per node otherwise.
        let mut plot_index = vec![
            None;
            if trace.plot_nodes.is_empty() {
                0
            } else {
                nodes.len()
            }
        ];
        for (k, &n) in trace.plot_nodes.iter().enumerate() {
            if local[n] != ABSENT {
                plot_index[local[n] as usize] = Some(k);
            }
        }
        let series = vec![Vec::new(); trace.plot_nodes.len()];
        let mut sim = Sim {
            sc,
            seed,
            duration,
            now: 0,
            seq: 0,
            // A client has its timer and at most a packet or two in flight at a time.
            queue: EventQueue::with_capacity(2 * links.len() + 16),
            responder: Responder::new(),
            packets: Vec::new(),
            free_packets: Vec::new(),
            nts_packets: InFlightSlab::default(),
            disturbances: Vec::new(),
            nodes,
            links,
            trace,
            series,
            plot_index,
            exchanges: 0,
            events: 0,
            shared_events: 0,
            lost: 0,
            line: String::new(),
        };
        if let Some(csv) = sim.trace.csv.as_deref_mut() {
            let _ = writeln!(
                csv,
                "time_s,node,true_offset_s,frequency_error_ppm,measured_offset_s,delay_s"
            );
        }
        for l in 0..sim.links.len() {
            sim.first_key_exchange(l);
        }
        for n in 0..sim.nodes.len() {
            let spec = &sc.nodes[sim.nodes[n].index as usize];
            for (k, &(at, _)) in spec.steps.iter().enumerate() {
                let index = sim.disturbances.len() as u32;
                sim.disturbances.push((n as u32, k as u32));
                sim.push(at, Kind::Step(index));
            }
            if sim.nodes[n].sync.is_some() {
                if spec.start > 0 {
                    // Its first deadline is its start (its sources' first requests).
                    sim.nodes[n].timer = spec.start;
                    sim.nodes[n].queued[0] = spec.start;
                    sim.push(spec.start, Kind::Timer(n as u32));
                } else {
                    sim.drain(n);
                }
            }
        }
        sim.push(0, Kind::Sample);
        sim
    }

    /// The seed of this run.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn push(&mut self, time: i64, kind: Kind) {
        self.seq += 1;
        self.queue.push(time, self.seq, kind);
    }

    /// Runs to the end and returns the statistics.
    pub fn run(mut self) -> Outcome {
        self.run_until(self.duration);
        self.finish()
    }

    /// Runs to the end like [`Sim::run`], in [`PROGRESS_CHUNKS`] equal steps of simulated time,
    /// and calls `progress(units)` after each: the units of all calls add up to `share`. The
    /// events processed, and so the outcome, are exactly those of [`Sim::run`].
    pub fn run_with_progress(mut self, share: u64, progress: &dyn Fn(u64)) -> Outcome {
        let mut reported = 0;
        for step in 1..=PROGRESS_CHUNKS {
            let until =
                (i128::from(self.duration) * i128::from(step) / i128::from(PROGRESS_CHUNKS)) as i64;
            self.run_until(until);
            let done = portion(share, step, PROGRESS_CHUNKS);
            if done > reported {
                progress(done - reported);
                reported = done;
            }
        }
        self.finish()
    }

    /// Processes every event up to true time `until` (ns, capped at the run's duration).
    pub fn run_until(&mut self, until: i64) {
        let until = until.min(self.duration);
        while self.queue.peek_time().is_some_and(|t| t <= until) {
            let (time, kind) = self.queue.pop().expect("peeked");
            self.now = time;
            self.events += 1;
            match kind {
                Kind::Timer(n) => self.on_timer(n as usize),
                Kind::Request(p) => self.serve(p, time),
                Kind::Transmit(p) => self.transmit_reply(p, time),
                Kind::Reply(p) => {
                    let packet = self.packets[p as usize];
                    let nts = (packet.nts != NO_NTS).then(|| self.nts_packets.take(packet.nts));
                    self.packets[p as usize].nts = NO_NTS;
                    self.free_packet(p);
                    self.on_reply(packet, nts)
                }
                Kind::KeyExchange(l) => self.on_key_exchange(l as usize),
                Kind::Sample => {
                    self.shared_events += 1;
                    self.on_sample()
                }
                Kind::Step(d) => {
                    let (n, k) = self.disturbances[d as usize];
                    if self.nodes[n as usize].reference.is_some() {
                        self.shared_events += 1;
                    }
                    let index = self.nodes[n as usize].index as usize;
                    let off = self.sc.nodes[index].steps[k as usize].1;
                    let node = &mut self.nodes[n as usize];
                    node.clock.disturb(self.now, off, &mut node.clock_rng);
                }
            }
        }
    }

    /// Exchanges completed so far.
    pub fn exchanges(&self) -> u64 {
        self.exchanges
    }

    /// The statistics at the end of the run (call after running to the end).
    pub fn finish(self) -> Outcome {
        let end = MonoTime(self.duration);
        let stratum = self
            .nodes
            .iter()
            .map(|n| match (&n.sync, n.reference) {
                (_, Some(s)) => s,
                (Some(sys), None) => sys.served_state(end).stratum,
                (None, None) => 16,
            })
            .collect();
        let updates = self
            .nodes
            .iter()
            .map(|n| {
                n.sync
                    .as_ref()
                    .map_or(0, |s| s.status(end).tracking.updates)
            })
            .collect();
        Outcome {
            index: self.nodes.iter().map(|n| n.index).collect(),
            counters: self.nodes.into_iter().map(|n| n.counters).collect(),
            stratum,
            updates,
            exchanges: self.exchanges,
            events: self.events,
            shared_events: self.shared_events,
            lost: self.lost,
            series: self.series,
        }
    }

    fn on_timer(&mut self, n: usize) {
        let t = self.now;
        let node = &mut self.nodes[n];
        if let Some(q) = node.queued.iter_mut().find(|q| **q == t) {
            *q = i64::MAX;
        }
        if node.timer != t {
            return; // superseded
        }
        node.timer = i64::MAX;
        let clock = node.clock.read(t, &mut node.clock_rng);
        if let Some(sys) = node.sync.as_mut() {
            sys.handle_timeout(MonoTime(t), clock);
        }
        self.drain(n);
    }

    /// Drains the node's outputs in the contract's order, then re-arms its timer.
    fn drain(&mut self, n: usize) {
        let t = self.now;
        let mut buf = [0u8; HEADER_LEN];
        loop {
            let node = &mut self.nodes[n];
            let Some(sys) = node.sync.as_mut() else {
                return;
            };
            let clock = node.clock.read(t, &mut node.clock_rng);
            let Some(tx) = sys.poll_transmit(MonoTime(t), clock, &mut node.core_rng, &mut buf)
            else {
                break;
            };
            let link = node.first_link + tx.source.0;
            let steps = node.steps;
            let nts = match self.links[link as usize].nts.as_deref_mut() {
                None => NO_NTS,
                Some(nts) => {
                    let counters = &mut self.nodes[n].counters.nts;
                    let request = nts.request(&buf, counters);
                    self.key_exchange_if_wanted(link as usize);
                    match request {
                        Some(p) => self.nts_packets.insert(p),
                        // No cookie: the request is not sent, and the core sees it lost.
                        None => continue,
                    }
                }
            };
            self.nodes[n].counters.sent += 1;
            let packet = Packet {
                bytes: buf,
                t1: clock.0,
                steps,
                link,
                nts,
            };
            let slot = self.alloc_packet(packet);
            self.send_request(slot);
        }
        let node = &mut self.nodes[n];
        let sys = node.sync.as_mut().expect("checked above");
        while let Some(cmd) = sys.poll_clock_command() {
            if matches!(cmd, ClockCommand::Step { .. }) {
                node.steps += 1;
                node.counters.steps += 1;
            }
            node.clock.apply(t, cmd, &mut node.clock_rng);
        }
        while sys.poll_event().is_some() {}
        let next = sys.poll_timeout().map_or(i64::MAX, |d| d.0.max(t + 1));
        if next != node.timer && next <= self.duration {
            node.timer = next;
            if !node.queued.contains(&next) {
                if let Some(q) = node.queued.iter_mut().find(|q| **q == i64::MAX) {
                    *q = next;
                }
                self.push(next, Kind::Timer(n as u32));
            }
        }
    }

    /// Returns a packet's slot. When every slot is free, a slab grown by a burst (every
    /// client's first request at t = 0) gives its memory back.
    fn free_packet(&mut self, slot: u32) {
        let nts = std::mem::replace(&mut self.packets[slot as usize].nts, NO_NTS);
        if nts != NO_NTS {
            self.nts_packets.take(nts);
        }
        self.free_packets.push(slot);
        if self.free_packets.len() == self.packets.len() && self.packets.capacity() > KEPT_SLOTS {
            self.packets = Vec::with_capacity(KEPT_SLOTS);
            self.free_packets = Vec::with_capacity(KEPT_SLOTS);
        }
    }

    fn alloc_packet(&mut self, p: Packet) -> u32 {
        match self.free_packets.pop() {
            Some(slot) => {
                self.packets[slot as usize] = p;
                slot
            }
            None => {
                self.packets.push(p);
                self.packets.len() as u32 - 1
            }
        }
    }

    /// Puts a packet on a link direction at `t`: None if it is lost (on the link's random
    /// stream of that direction), else its arrival time.
    fn transit(&mut self, l: usize, request: bool, t: i64) -> Option<i64> {
        let link = &mut self.links[l];
        let profile = &self.sc.profiles[link.profile as usize];
        let (dir, rng): (&Direction, &mut Rng) = if request {
            (&profile.request, &mut link.request_rng)
        } else {
            (&profile.reply, &mut link.reply_rng)
        };
        if profile.is_down(t) || (dir.loss > 0.0 && uniform(rng) < dir.loss) {
            self.lost += 1;
            return None;
        }
        let jitter = match dir.jitter {
            None => 0.0,
            Some(j) => {
                let x = match j.distribution {
                    Distribution::Exponential => exponential(rng),
                    Distribution::Normal => normal(rng).abs(),
                    Distribution::Uniform => uniform(rng),
                };
                x * j.scale.nanos() as f64
            }
        };
        Some(t + dir.delay + jitter.round() as i64)
    }

    /// Sends the request in packet `slot` on link `l` now. A server whose clock is a pure
    /// function of true time (a reference without wander or scheduled steps) is answered at
    /// once, at the request's arrival time: nothing else can happen at that server in between
    /// that would change its answer, and the reply's random draws are on the link's own
    /// stream, in the order of the link's requests either way.
    fn send_request(&mut self, slot: u32) {
        let l = self.packets[slot as usize].link as usize;
        let Some(arrival) = self.transit(l, true, self.now) else {
            self.free_packet(slot);
            return;
        };
        if self.nodes[self.links[l].server as usize].answers_at_once {
            if arrival <= self.duration {
                self.serve(slot, arrival);
            }
        } else {
            self.push(arrival, Kind::Request(slot));
        }
    }

    /// Sends the reply in packet `slot` back on its link at `t`; its server's clock reads
    /// `clock` (Unix ns). An NTS reply is sealed here, once its header is final.
    fn send_reply(&mut self, slot: u32, t: i64, clock: i64) {
        let p = self.packets[slot as usize];
        let l = p.link as usize;
        if p.nts != NO_NTS {
            let link = &mut self.links[l];
            let server = self.nodes[link.server as usize].nts.as_deref();
            let ring = server.expect("an NTS source's server has masters").ring(t);
            let nts = link
                .nts
                .as_deref_mut()
                .expect("an NTS packet's link runs NTS");
            if !nts.serve(
                self.nts_packets.get_mut(p.nts),
                &p.bytes,
                ring,
                unix_secs(clock),
            ) {
                self.free_packet(slot);
                return;
            }
        }
        match self.transit(l, false, t) {
            Some(arrival) => self.push(arrival, Kind::Reply(slot)),
            None => self.free_packet(slot),
        }
    }

    /// The request in packet `slot` arrives at its link's server at `t`: answer it.
    fn serve(&mut self, slot: u32, t: i64) {
        let p = self.packets[slot as usize];
        let link = &self.links[p.link as usize];
        let processing = self.sc.profiles[link.profile as usize].processing;
        let node = &mut self.nodes[link.server as usize];
        if t < self.sc.nodes[node.index as usize].start {
            // Not running yet: nothing answers.
            self.free_packet(slot);
            return;
        }
        let t2 = node.clock.read(t, &mut node.clock_rng);
        let state = match (node.reference, &node.sync) {
            (Some(stratum), _) => {
                ServedState::local(stratum, RefId(*b"GPS\0"), REFERENCE_PRECISION, t2)
            }
            (None, Some(sys)) => sys.served_state(MonoTime(t)),
            (None, None) => ServedState::unsynchronized(REFERENCE_PRECISION),
        };
        let mut reply = Packet {
            bytes: [0; HEADER_LEN],
            ..p
        };
        // The responder sees the whole datagram, extension fields included, as the daemon's does.
        let request: &[u8] = match p.nts {
            NO_NTS => &p.bytes,
            k => &self.nts_packets.get_mut(k).bytes,
        };
        match self
            .responder
            .respond(request, t2, &state, &mut reply.bytes)
        {
            Response::Reply(HEADER_LEN) => {}
            _ => {
                self.free_packet(slot);
                return;
            }
        }
        node.counters.served += 1;
        self.packets[slot as usize] = reply;
        if processing == 0 {
            self.send_reply(slot, t, t2.0);
        } else if node.answers_at_once {
            let done = t + processing;
            if done <= self.duration {
                self.transmit_reply(slot, done);
            }
        } else {
            self.push(t + processing, Kind::Transmit(slot));
        }
    }

    /// The server of its link stamps and sends the reply in packet `slot` at `t`.
    fn transmit_reply(&mut self, slot: u32, t: i64) {
        let l = self.packets[slot as usize].link as usize;
        let node = &mut self.nodes[self.links[l].server as usize];
        let t3 = node.clock.read(t, &mut node.clock_rng);
        stamp_transmit(&mut self.packets[slot as usize].bytes, t3.to_ntp());
        self.send_reply(slot, t, t3.0);
    }

    /// A reply arrives at its client; `nts` is its NTS datagram, if it carries one.
    fn on_reply(&mut self, mut p: Packet, nts: Option<crate::nts::InFlight>) {
        let t = self.now;
        let l = p.link as usize;
        let (client, source) = (self.links[l].client as usize, self.links[l].source);
        if let Some(datagram) = nts {
            let link = self.links[l].nts.as_deref_mut().expect("NTS link");
            let header = link.accept(datagram, &mut self.nodes[client].counters.nts);
            self.key_exchange_if_wanted(l);
            match header {
                Some(h) => p.bytes = h,
                // Not authentic, or a NAK: the core never sees it.
                None => return,
            }
        }
        self.exchanges += 1;
        let node = &mut self.nodes[client];
        let t4 = node.clock.read(t, &mut node.clock_rng);
        node.counters.received += 1;
        let measured = (p.steps == node.steps)
            .then(|| Header::parse(&p.bytes).ok())
            .flatten()
            .map(|h| {
                let m = measure(ntpkit_core::ClockTime(p.t1).to_ntp(), &h, t4.to_ntp());
                (m.offset_ns as f64 * 1e-9, m.delay_ns as f64 * 1e-9)
            });
        if let Some((offset, _)) = measured {
            node.counters.correction_sum += offset.abs();
            node.counters.corrections += 1;
        }
        if let (Some(csv), Some((offset, delay))) = (self.trace.csv.as_deref_mut(), measured) {
            let (err, freq) = node.clock.error(t, &mut node.clock_rng);
            self.line.clear();
            let _ = writeln!(
                self.line,
                "{:.9},{},{:.9e},{:.6},{:.9e},{:.9e}",
                t as f64 * 1e-9,
                self.sc.nodes[node.index as usize].name,
                err * 1e-9,
                freq,
                offset,
                delay
            );
            let _ = csv.write_all(self.line.as_bytes());
        }
        let sys = node.sync.as_mut().expect("only clients send requests");
        sys.handle_reply(MonoTime(t), t4, SourceId(source), &p.bytes);
        self.drain(client);
    }

    /// Whether the server of link `l` runs at `t`.
    fn server_running(&self, l: usize, t: i64) -> bool {
        let server = &self.nodes[self.links[l].server as usize];
        t >= self.sc.nodes[server.index as usize].start
    }

    /// An NTS source's first key exchange, done when its client starts (the client ran it
    /// before): it fails only if the server does not run or the link is down at that moment,
    /// and then the first poll starts a modelled one.
    fn first_key_exchange(&mut self, l: usize) {
        let client = self.links[l].client as usize;
        let start = self.sc.nodes[self.nodes[client].index as usize].start;
        let up = self.server_running(l, start)
            && !self.sc.profiles[self.links[l].profile as usize].is_down(start);
        let link = &mut self.links[l];
        let (Some(nts), true) = (link.nts.as_deref_mut(), up) else {
            return;
        };
        let server = self.nodes[link.server as usize].nts.as_deref();
        let ring = server
            .expect("an NTS source's server has masters")
            .ring(start);
        let mut counters = self.nodes[client].counters.nts;
        nts.fill(ring, crate::nts::true_unix_secs(start), &mut counters);
        self.nodes[client].counters.nts = counters;
    }

    /// Starts a key exchange on link `l` now if its NTS source needs one.
    fn key_exchange_if_wanted(&mut self, l: usize) {
        let t = self.now;
        let running = self.server_running(l, t);
        let link = &mut self.links[l];
        let Some(nts) = link.nts.as_deref_mut().filter(|n| n.wants_key_exchange()) else {
            return;
        };
        let done = nts.start_key_exchange(t, &self.sc.profiles[link.profile as usize], running);
        if done <= self.duration {
            self.push(done, Kind::KeyExchange(l as u32));
        }
    }

    /// A key exchange of link `l` ends or is retried now.
    fn on_key_exchange(&mut self, l: usize) {
        let t = self.now;
        let running = self.server_running(l, t);
        let link = &mut self.links[l];
        let client = link.client as usize;
        let server = self.nodes[link.server as usize].nts.as_deref();
        let ring = server.expect("an NTS source's server has masters").ring(t);
        let nts = link
            .nts
            .as_deref_mut()
            .expect("only NTS links exchange keys");
        let mut counters = self.nodes[client].counters.nts;
        let next = nts.on_key_exchange(
            t,
            ring,
            &self.sc.profiles[link.profile as usize],
            running,
            &mut counters,
        );
        self.nodes[client].counters.nts = counters;
        if let Some(next) = next.filter(|&n| n <= self.duration) {
            self.push(next, Kind::KeyExchange(l as u32));
        }
    }

    fn on_sample(&mut self) {
        let t = self.now;
        let stats = t >= self.sc.stats_start;
        let threshold = self.sc.sync_threshold as f64;
        for (i, node) in self.nodes.iter_mut().enumerate() {
            let (err_ns, freq) = node.clock.error(t, &mut node.clock_rng);
            let err = err_ns * 1e-9;
            let c = &mut node.counters;
            c.last = (err, freq);
            if err_ns.abs() >= threshold {
                c.synced_since = None;
            } else if c.synced_since.is_none() {
                c.synced_since = Some(t);
            }
            if stats {
                c.n += 1;
                c.err.0 += err;
                c.err.1 += err * err;
                c.err.2 = c.err.2.max(err.abs());
                c.freq.0 += freq;
                c.freq.1 += freq * freq;
                c.freq.2 = c.freq.2.max(freq.abs());
            }
            if let Some(sys) = node.sync.as_ref() {
                let now = MonoTime(t);
                let bound = sys.error_bound(now);
                if c.bound.is_none() && bound.status == BoundStatus::Synchronized {
                    c.bound = Some(Box::new(BoundCounters::new(t)));
                }
                if let Some(b) = c.bound.as_deref_mut() {
                    b.add(t, err, bound.bound(), sys.clockbound_formula(now));
                }
            }
            if let Some(&Some(k)) = self.plot_index.get(i) {
                self.series[k].push((t as f64 * 1e-9, err));
            }
            if let Some(csv) = self.trace.csv.as_deref_mut() {
                self.line.clear();
                let _ = writeln!(
                    self.line,
                    "{:.9},{},{:.9e},{:.6},,",
                    t as f64 * 1e-9,
                    self.sc.nodes[node.index as usize].name,
                    err,
                    freq
                );
                let _ = csv.write_all(self.line.as_bytes());
            }
        }
        let next = t + self.sc.sample_interval;
        if next <= self.duration {
            self.push(next, Kind::Sample);
        } else if t < self.duration {
            // Always sample the final instant, for the final offsets.
            self.push(self.duration, Kind::Sample);
        }
    }
}

/// `job(0)` … `job(jobs − 1)` on up to `threads` threads, which take the jobs in turn; the
/// results in job order.
pub fn parallel_map<T: Send>(
    jobs: usize,
    threads: usize,
    job: impl Fn(usize) -> T + Sync,
) -> Vec<T> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<(usize, T)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.clamp(1, jobs.max(1)))
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if k >= jobs {
                            break mine;
                        }
                        mine.push((k, job(k)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker thread"))
            .collect()
    });
    done.sort_by_key(|(k, _)| *k);
    done.into_iter().map(|(_, t)| t).collect()
}

/// Progress units of one whole run (see [`simulate_sharded_with_progress`]).
pub const PROGRESS_PER_RUN: u64 = 1 << 20;

/// Steps of simulated time between two progress reports of one simulation: fine enough for a
/// display, few enough to cost nothing.
pub const PROGRESS_CHUNKS: u64 = 1000;

/// `total × part / parts`, rounded down (so consecutive differences add up to `total`).
fn portion(total: u64, part: u64, parts: u64) -> u64 {
    (u128::from(total) * u128::from(part) / u128::from(parts.max(1))) as u64
}

/// Clients per shard when a scenario is split (see [`simulate_sharded`]): small enough that a
/// shard's nodes stay in one core's 1 MiB L2 cache (a node is about 2 KiB), large enough that
/// the replicated reference servers and statistics samples cost nothing.
const SHARD_CLIENTS: usize = 256;

/// Runs `scenario` on up to `threads` threads when its clients are independent, and returns
/// exactly the outcome of [`Sim::run`] on one thread.
///
/// Clients of reference clocks without wander never affect each other: each client's events
/// touch only its own state, its links' random streams and the pure clock of a reference. Such
/// a scenario is cut into contiguous blocks of `SHARD_CLIENTS` clients; every shard simulates
/// its block plus a replica of every reference, with the same per-node and per-link streams as
/// the whole run. A shard's events are then the whole run's events restricted to it, in the
/// same order, so the merged statistics are identical (the determinism tests compare them).
/// Shards are small so that each runs from cache: at 10,000 clients a single run spends more
/// time waiting on memory than computing. The threads take shards in turn. Any other scenario
/// runs on one thread, whole.
pub fn simulate_sharded(sc: &Scenario, seed: u64, duration: i64, threads: usize) -> Outcome {
    simulate_sharded_with_progress(sc, seed, duration, threads, &|_| {})
}

/// [`simulate_sharded`], calling `progress(units)` as the simulation advances (from the
/// threads that run it, [`PROGRESS_CHUNKS`] times per shard): the units add up to
/// [`PROGRESS_PER_RUN`]. For a progress display only: the outcome does not depend on it.
pub fn simulate_sharded_with_progress(
    sc: &Scenario,
    seed: u64,
    duration: i64,
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Outcome {
    let independent = sc.nodes.iter().all(|n| match n.reference {
        Some(_) => n.wander == 0.0,
        None => n
            .sources
            .iter()
            .all(|s| sc.nodes[s.server].reference.is_some()),
    });
    let clients: Vec<usize> = (0..sc.nodes.len())
        .filter(|&i| sc.nodes[i].reference.is_none())
        .collect();
    let shards = clients
        .len()
        .div_ceil(SHARD_CLIENTS)
        .max(threads.min(clients.len()));
    if !independent || shards <= 1 {
        return Sim::new(sc, seed, duration, Trace::default())
            .run_with_progress(PROGRESS_PER_RUN, progress);
    }
    let mut owner = vec![None; sc.nodes.len()];
    for (rank, &i) in clients.iter().enumerate() {
        owner[i] = Some(rank * shards / clients.len());
    }
    let owner = &owner;
    let outs = parallel_map(shards, threads, |k| {
        let active = |i: usize| owner[i].is_none_or(|o| o == k);
        // Shard k's share of the run's progress units; the shares add up to the whole.
        let share = portion(PROGRESS_PER_RUN, k as u64 + 1, shards as u64)
            - portion(PROGRESS_PER_RUN, k as u64, shards as u64);
        Sim::new_shard(sc, seed, duration, Trace::default(), active)
            .run_with_progress(share, progress)
    });
    let shared = outs[0].shared_events;
    debug_assert!(outs.iter().all(|o| o.shared_events == shared));
    let n = sc.nodes.len();
    let mut merged = Outcome {
        index: (0..n as u32).collect(),
        counters: vec![NodeCounters::default(); n],
        stratum: vec![16; n],
        updates: vec![0; n],
        exchanges: 0,
        events: 0,
        shared_events: shared,
        lost: 0,
        series: Vec::new(),
    };
    for out in outs {
        merged.exchanges += out.exchanges;
        merged.events += out.events - shared;
        merged.lost += out.lost;
        for (k, &i) in out.index.iter().enumerate() {
            let i = i as usize;
            if owner[i].is_none() {
                // A replicated reference: every shard's copy has the same state, and what it
                // served adds up.
                let served = merged.counters[i].served + out.counters[k].served;
                merged.counters[i] = out.counters[k].clone();
                merged.counters[i].served = served;
            } else {
                merged.counters[i] = out.counters[k].clone();
            }
            merged.stratum[i] = out.stratum[k];
            merged.updates[i] = out.updates[k];
        }
    }
    merged.events += shared;
    merged
}

#[cfg(test)]
mod tests {
    use super::parallel_map;

    #[test]
    fn parallel_map_runs_every_job_once_and_keeps_job_order() {
        for (jobs, threads) in [(0, 2), (1, 4), (7, 1), (50, 3)] {
            let runs = std::sync::atomic::AtomicUsize::new(0);
            let out = parallel_map(jobs, threads, |k| {
                runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                k * k
            });
            assert_eq!(out, (0..jobs).map(|k| k * k).collect::<Vec<_>>());
            assert_eq!(runs.into_inner(), jobs);
        }
    }
}
