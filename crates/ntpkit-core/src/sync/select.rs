//! Source selection: which sources tell the truth, and which of those to follow.
//!
//! 1. Intersection (Marzullo's algorithm as RFC 5905 §11.2.1 applies it): each candidate's
//!    correctness interval is `offset ± root distance`. Find the smallest number of falsetickers
//!    `f < n/2` such that some point lies in at least `n − f` intervals; the sources whose
//!    intervals contain the intersection of those are truechimers, the rest falsetickers. If no
//!    such `f` exists, no majority agrees and nothing is selected.
//! 2. Clustering (after RFC 5905 §11.2.2): while more than [`MIN_CLUSTER`] survivors remain,
//!    drop the one whose offset is farthest from the survivors' median offset in units of its
//!    own noise (its jitter, or the survivors' median jitter if larger), unless that is within
//!    [`CLUSTER_JITTERS`]. RFC 5905 compares each source's RMS distance from all the others
//!    with the *smallest* jitter, which drops sources as good as the rest whenever one happens
//!    to measure a small jitter, and drops precise sources for their distance from noisy ones
//!    (at start-up, when jitters are not known yet, both happen). The survivors' samples are
//!    weighted by their quality anyway, so only a source that stands apart from the consensus
//!    by more than its own noise is left out.
//! 3. The system peer is the survivor with the smallest root distance, kept while it survives
//!    (no flapping between equals). The discipline then combines the survivors' samples,
//!    weighted by their quality.

use super::inline::InlineVec;

/// Survivors kept by clustering at least (RFC 5905 NMIN... CLUSTER_MIN).
pub const MIN_CLUSTER: usize = 3;
/// Clustering drops a survivor only when it sits further from the survivors' median offset than
/// this many times its noise.
pub const CLUSTER_JITTERS: f64 = 3.0;

/// One source as selection sees it.
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct Candidate {
    /// Caller's index of the source.
    pub index: usize,
    /// Offset estimate, seconds.
    pub offset: f64,
    /// Root distance (half-width of the correctness interval), seconds.
    pub root_distance: f64,
    /// Jitter, seconds.
    pub jitter: f64,
}

/// What selection decided.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct Selection {
    /// Indices of the falsetickers.
    pub falsetickers: SourceSet,
    /// Truechimers dropped by clustering.
    pub outliers: SourceSet,
    /// Truechimers kept: their samples are combined.
    pub survivors: SourceSet,
    /// The system peer, if a majority agreed.
    pub system_peer: Option<usize>,
}

/// A set of source indices. The first 64 are bits of one word held inline, so a node with a
/// usual number of sources keeps its selection in 16 bytes without any allocation (a
/// simulation holds one per client); more sources spill into further words on the heap.
#[derive(Clone, Default)]
pub struct SourceSet {
    low: u64,
    /// Words for indices 64 and up. Boxed so that the common case costs one pointer, not a
    /// `Vec`'s three words.
    #[allow(clippy::box_collection)]
    high: Option<Box<Vec<u64>>>,
}

impl SourceSet {
    /// Adds `index`.
    pub fn push(&mut self, index: usize) {
        if index < 64 {
            self.low |= 1 << index;
        } else {
            let (word, bit) = (index / 64 - 1, index % 64);
            let high = self.high.get_or_insert_with(Default::default);
            if high.len() <= word {
                high.resize(word + 1, 0);
            }
            high[word] |= 1 << bit;
        }
    }

    /// True if `index` is in the set.
    pub fn contains(&self, index: &usize) -> bool {
        let index = *index;
        if index < 64 {
            self.low & (1 << index) != 0
        } else {
            self.high_words()
                .get(index / 64 - 1)
                .is_some_and(|w| w & (1 << (index % 64)) != 0)
        }
    }

    /// Empties the set (keeping any spilled words' allocation).
    pub fn clear(&mut self) {
        self.low = 0;
        if let Some(high) = &mut self.high {
            high.iter_mut().for_each(|w| *w = 0);
        }
    }

    /// Number of indices in the set.
    pub fn len(&self) -> usize {
        self.low.count_ones() as usize
            + self
                .high_words()
                .iter()
                .map(|w| w.count_ones() as usize)
                .sum::<usize>()
    }

    /// True if the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The indices in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(self.low)
            .chain(self.high_words().iter().copied())
            .enumerate()
            .flat_map(|(w, mut bits)| {
                std::iter::from_fn(move || {
                    (bits != 0).then(|| {
                        let b = bits.trailing_zeros() as usize;
                        bits &= bits - 1;
                        w * 64 + b
                    })
                })
            })
    }

    fn high_words(&self) -> &[u64] {
        self.high.as_deref().map_or(&[], |v| v.as_slice())
    }

    /// The indices in ascending order, as a vector.
    pub fn to_vec(&self) -> Vec<usize> {
        self.iter().collect()
    }
}

impl PartialEq for SourceSet {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for SourceSet {}

impl Extend<usize> for SourceSet {
    fn extend<I: IntoIterator<Item = usize>>(&mut self, iter: I) {
        for i in iter {
            self.push(i);
        }
    }
}

impl std::fmt::Debug for SourceSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// Why nothing was selected.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NoSelection {
    /// Fewer usable sources than `minsources` (none reachable, synchronized and close enough):
    /// nothing says the clock is wrong, there is only nothing to follow.
    TooFewSources {
        /// Usable sources.
        usable: usize,
        /// Required.
        required: usize,
    },
    /// A majority agrees, but fewer sources than `minsources` are in it.
    TooFewAgree {
        /// Sources in the majority.
        agreeing: usize,
        /// Required.
        required: usize,
    },
    /// No majority of the sources agrees on the time.
    NoMajority {
        /// Size of the largest group whose intervals intersect.
        largest_agreeing: usize,
        /// Usable sources.
        usable: usize,
    },
}

impl NoSelection {
    /// True if the sources disagree (no majority, or too few in it): then the clock's time
    /// cannot be vouched for, and a server stops serving it as synchronized at once. Otherwise
    /// (nothing usable) it may hold over on its last update.
    pub fn is_disagreement(&self) -> bool {
        !matches!(self, NoSelection::TooFewSources { .. })
    }
}

impl core::fmt::Display for NoSelection {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NoSelection::TooFewSources { usable: 0, .. } => f.write_str("no selectable sources"),
            NoSelection::TooFewSources { usable, required } => {
                write!(f, "{usable} usable source(s), minsources is {required}")
            }
            NoSelection::TooFewAgree { agreeing, required } => write!(
                f,
                "only {agreeing} source(s) agree on the time, minsources is {required}"
            ),
            NoSelection::NoMajority {
                largest_agreeing,
                usable,
            } => write!(
                f,
                "no majority: at most {largest_agreeing} of {usable} sources agree on the time"
            ),
        }
    }
}

/// Runs intersection and clustering over `candidates`. `current_peer` is the previous system
/// peer's index, kept if it survives.
pub fn select(
    candidates: &[Candidate],
    minsources: usize,
    current_peer: Option<usize>,
) -> Result<Selection, (NoSelection, Selection)> {
    let mut sel = Selection::default();
    match select_into(candidates, minsources, current_peer, &mut sel) {
        Ok(()) => Ok(sel),
        Err(why) => Err((why, sel)),
    }
}

/// [`select`] into a caller's `Selection`, reusing its lists' allocations: call on every
/// sample. On error `out` holds what was decided before selection failed.
pub fn select_into(
    candidates: &[Candidate],
    minsources: usize,
    current_peer: Option<usize>,
    out: &mut Selection,
) -> Result<(), NoSelection> {
    out.falsetickers.clear();
    out.outliers.clear();
    out.survivors.clear();
    out.system_peer = None;
    let n = candidates.len();
    if n < minsources.max(1) {
        return Err(NoSelection::TooFewSources {
            usable: n,
            required: minsources.max(1),
        });
    }
    // One source: it is its own majority and the whole cluster (what the general path below
    // concludes, without its working storage).
    if let [c] = candidates {
        if c.root_distance >= 0.0 && c.offset.is_finite() {
            out.survivors.push(c.index);
            out.system_peer = Some(c.index);
            return Ok(());
        }
    }
    let Some((low, high)) = intersection(candidates) else {
        out.falsetickers.extend(candidates.iter().map(|c| c.index));
        return Err(NoSelection::NoMajority {
            largest_agreeing: largest_agreeing(candidates),
            usable: n,
        });
    };
    let mut truechimers = InlineVec::<Candidate, INLINE_CANDIDATES>::new(candidates[0]);
    for c in candidates {
        if c.offset - c.root_distance <= high && c.offset + c.root_distance >= low {
            truechimers.push(*c);
        } else {
            out.falsetickers.push(c.index);
        }
    }
    if truechimers.len() < minsources {
        out.survivors
            .extend(truechimers.as_slice().iter().map(|c| c.index));
        return Err(NoSelection::TooFewAgree {
            agreeing: truechimers.len(),
            required: minsources,
        });
    }
    // Clustering: the consensus and the typical noise are the truechimers' own, taken once
    // (so that dropping one extreme does not move the consensus towards the other).
    let typical_jitter = median(truechimers.as_slice(), |c| c.jitter);
    let consensus = median(truechimers.as_slice(), |c| c.offset);
    // A survivor's distance from the consensus in units of its noise: its own jitter, or the
    // typical one if it measures less.
    let excess = |c: &Candidate| (c.offset - consensus).abs() / c.jitter.max(typical_jitter);
    while truechimers.len() > MIN_CLUSTER.max(minsources) {
        let (worst, most) = truechimers
            .as_slice()
            .iter()
            .enumerate()
            .map(|(i, c)| (i, excess(c)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("non-empty");
        if most <= CLUSTER_JITTERS {
            break;
        }
        out.outliers.push(truechimers.remove(worst).index);
    }
    let kept = truechimers.as_slice();
    out.survivors.extend(kept.iter().map(|c| c.index));
    let best = kept
        .iter()
        .min_by(|a, b| a.root_distance.total_cmp(&b.root_distance))
        .expect("at least one survivor");
    out.system_peer = Some(match current_peer {
        Some(p) if out.survivors.contains(&p) => p,
        _ => best.index,
    });
    Ok(())
}

/// The median of `value` over the candidates (the mean of the middle two for an even count).
fn median(candidates: &[Candidate], value: impl Fn(&Candidate) -> f64) -> f64 {
    let mut values = InlineVec::<f64, INLINE_CANDIDATES>::new(0.0);
    for c in candidates {
        values.push(value(c));
    }
    let v = values.as_mut_slice();
    v.sort_unstable_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Candidates (and twice as many interval edges) handled on the stack; more sources than
/// this still work, through the heap.
const INLINE_CANDIDATES: usize = 16;

/// Both edges of every candidate's correctness interval, sorted: (value, +1 for a lower edge,
/// −1 for an upper edge). Lower edges sort before upper edges at equal values, so touching
/// intervals count as overlapping. Equal entries are identical, so an unstable sort (which
/// never allocates) gives the same order as a stable one.
fn sorted_edges(candidates: &[Candidate]) -> InlineVec<(f64, i32), { 2 * INLINE_CANDIDATES }> {
    let mut edges = InlineVec::new((0.0, 0));
    for c in candidates {
        edges.push((c.offset - c.root_distance, 1));
        edges.push((c.offset + c.root_distance, -1));
    }
    edges
        .as_mut_slice()
        .sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
    edges
}

/// The intersection interval agreed by the largest possible majority, if any.
fn intersection(candidates: &[Candidate]) -> Option<(f64, f64)> {
    let n = candidates.len();
    let edges = sorted_edges(candidates);
    let edges = edges.as_slice();
    let mut allowed = 0;
    while 2 * allowed < n {
        let need = (n - allowed) as i32;
        let mut count = 0;
        let mut low = None;
        for &(v, kind) in edges {
            count += kind;
            if count >= need {
                low = Some(v);
                break;
            }
        }
        count = 0;
        let mut high = None;
        for &(v, kind) in edges.iter().rev() {
            count -= kind;
            if count >= need {
                high = Some(v);
                break;
            }
        }
        if let (Some(l), Some(h)) = (low, high) {
            if l <= h {
                return Some((l, h));
            }
        }
        allowed += 1;
    }
    None
}

/// The largest number of intervals sharing a point (for reporting when there is no majority).
fn largest_agreeing(candidates: &[Candidate]) -> usize {
    let mut count = 0;
    let mut best = 0;
    for &(_, kind) in sorted_edges(candidates).as_slice() {
        count += kind;
        best = best.max(count);
    }
    best as usize
}

/// How far the survivors' spread may exceed their stated variance, in units of it, and still
/// count as their own errors (see [`spread_beyond_stated`]).
pub const SERVER_ERROR_LIMIT: f64 = 9.0;

/// The variance (s²) the survivors' offsets spread by beyond what their own samples explain:
/// the sample variance of their `(offset, stated variance)` estimates less the mean stated
/// variance, never negative; zero for fewer than two. Servers that are themselves disciplined
/// (stratum 2 and below) each carry an error of their own, tens of µs that changes over
/// thousands of seconds, which no delay shows: each of their samples holds that error as well
/// as its path's. A spread of more than [`SERVER_ERROR_LIMIT`] stated variances beyond them
/// counts for nothing: servers that far apart are converging after their own start or one of
/// them is wrong, and taken as every sample's noise it held a three-level network started
/// together at milliseconds for hours (own simulator, `large-network`).
pub fn spread_beyond_stated(estimates: impl IntoIterator<Item = (f64, f64)>) -> f64 {
    let (mut n, mut sum, mut sum_sq, mut stated) = (0.0, 0.0, 0.0, 0.0);
    for (offset, variance) in estimates {
        n += 1.0;
        sum += offset;
        sum_sq += offset * offset;
        stated += variance;
    }
    if n < 2.0 {
        return 0.0;
    }
    let mean = sum / n;
    let spread = (sum_sq / n - mean * mean).max(0.0) * n / (n - 1.0);
    let stated = stated / n;
    let beyond = (spread - stated).max(0.0);
    if beyond > SERVER_ERROR_LIMIT * stated {
        return 0.0;
    }
    beyond
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_that_agree_within_their_noise_spread_by_nothing_more() {
        assert_eq!(spread_beyond_stated([]), 0.0);
        assert_eq!(spread_beyond_stated([(1e-3, 1e-10)]), 0.0);
        // Four sources within ±10 µs, each stated to 20 µs: nothing beyond.
        let agree = [
            (10e-6, 4e-10),
            (-10e-6, 4e-10),
            (5e-6, 4e-10),
            (-5e-6, 4e-10),
        ];
        assert_eq!(spread_beyond_stated(agree), 0.0);
    }

    #[test]
    fn sources_with_errors_of_their_own_spread_beyond_their_stated_noise() {
        // ±60 µs apart, each stated to 25 µs: a spread of (69 µs)² of which (25 µs)² is stated
        // (the rest, (65 µs)², within nine stated variances).
        let apart = [
            (60e-6, 6.25e-10),
            (-60e-6, 6.25e-10),
            (60e-6, 6.25e-10),
            (-60e-6, 6.25e-10),
        ];
        let beyond = spread_beyond_stated(apart);
        let expected = 60e-6f64.powi(2) * 4.0 / 3.0 - 6.25e-10;
        assert!(
            (beyond - expected).abs() < 1e-15,
            "{beyond} against {expected}"
        );
    }

    #[test]
    fn sources_far_apart_are_not_taken_for_noise() {
        // ±5 ms apart, each stated to 20 µs: converging or wrong, not noise.
        let far = [(5e-3, 4e-10), (-5e-3, 4e-10), (5e-3, 4e-10), (-5e-3, 4e-10)];
        assert_eq!(spread_beyond_stated(far), 0.0);
    }

    fn c(index: usize, offset: f64) -> Candidate {
        Candidate {
            index,
            offset,
            root_distance: 0.01,
            jitter: 0.0001,
        }
    }

    #[test]
    fn single_source_is_selected() {
        let s = select(&[c(0, 0.3)], 1, None).unwrap();
        assert_eq!(s.system_peer, Some(0));
        assert_eq!(s.survivors.to_vec(), vec![0]);
    }

    #[test]
    fn one_source_takes_the_same_decision_as_the_general_path() {
        let one = [c(7, 0.25)];
        let fast = select(&one, 1, None).unwrap();
        assert_eq!(fast.survivors.to_vec(), vec![7]);
        assert_eq!(fast.system_peer, Some(7));
        assert!(fast.falsetickers.is_empty() && fast.outliers.is_empty());
        // The general path on the same source, reached through a duplicate that it keeps.
        let general = select(&[one[0], one[0]], 1, None).unwrap();
        assert_eq!(general.system_peer, Some(7));
        // Too few for minsources either way.
        assert!(select(&one, 2, None).is_err());
    }

    #[test]
    fn source_sets_hold_any_index_in_order() {
        let mut set = SourceSet::default();
        set.extend([130, 3, 64, 0, 63, 3]);
        assert_eq!(set.to_vec(), vec![0, 3, 63, 64, 130]);
        assert_eq!(set.len(), 5);
        assert!(set.contains(&130) && !set.contains(&129) && !set.contains(&1000));
        set.clear();
        assert!(set.is_empty() && set.to_vec().is_empty());
        assert_eq!(set, SourceSet::default());
    }

    #[test]
    fn two_of_five_falsetickers_rejected() {
        let cands = [
            c(0, 0.0001),
            c(1, 1.0),
            c(2, -0.0002),
            c(3, 2.0),
            c(4, 0.0003),
        ];
        let s = select(&cands, 1, None).unwrap();
        assert_eq!(s.falsetickers.to_vec(), vec![1, 3]);
        let mut kept = s.survivors.to_vec();
        kept.extend(s.outliers.iter());
        kept.sort();
        assert_eq!(kept, vec![0, 2, 4]);
        assert!(matches!(s.system_peer, Some(0 | 2 | 4)));
    }

    #[test]
    fn three_of_five_wrong_means_no_majority() {
        let cands = [c(0, 0.0), c(1, 1.0), c(2, 0.0001), c(3, 2.0), c(4, 3.0)];
        let (why, sel) = select(&cands, 1, None).unwrap_err();
        assert_eq!(
            why,
            NoSelection::NoMajority {
                largest_agreeing: 2,
                usable: 5
            }
        );
        assert_eq!(sel.system_peer, None);
        assert!(why.to_string().contains("no majority"));
    }

    #[test]
    fn two_disagreeing_sources_have_no_majority() {
        let (why, _) = select(&[c(0, 0.0), c(1, 1.0)], 1, None).unwrap_err();
        assert!(matches!(why, NoSelection::NoMajority { .. }));
    }

    #[test]
    fn minsources_enforced() {
        let (why, _) = select(&[c(0, 0.0), c(1, 0.0)], 3, None).unwrap_err();
        assert_eq!(
            why,
            NoSelection::TooFewSources {
                usable: 2,
                required: 3
            }
        );
        assert!(!why.is_disagreement());
        let (why, _) = select(&[], 1, None).unwrap_err();
        assert_eq!(why.to_string(), "no selectable sources");
    }

    #[test]
    fn clustering_drops_the_outlying_truechimer() {
        // All overlap (wide intervals) but one sits far from the others.
        let mut cands: Vec<Candidate> = (0..4).map(|i| c(i, i as f64 * 1e-5)).collect();
        cands.push(Candidate {
            index: 4,
            offset: 0.009,
            root_distance: 0.01,
            jitter: 0.0001,
        });
        let s = select(&cands, 1, None).unwrap();
        assert!(s.outliers.contains(&4), "{s:?}");
        assert!(s.falsetickers.is_empty());
    }

    #[test]
    fn current_peer_kept_while_it_survives() {
        let mut cands = vec![c(0, 0.0), c(1, 0.0), c(2, 0.0)];
        cands[0].root_distance = 0.005;
        assert_eq!(select(&cands, 1, Some(2)).unwrap().system_peer, Some(2));
        assert_eq!(select(&cands, 1, None).unwrap().system_peer, Some(0));
    }

    #[test]
    fn more_sources_than_the_stack_buffers_hold() {
        // 20 candidates: 18 agree (spread over 1.7 ms, each with 0.1 ms of jitter), two are far
        // off; clustering keeps those within three jitters of the consensus.
        let mut cands: Vec<Candidate> = (0..18).map(|i| c(i, i as f64 * 1e-4)).collect();
        cands.push(c(18, 5.0));
        cands.push(c(19, -5.0));
        let s = select(&cands, 1, None).unwrap();
        assert_eq!(s.falsetickers.to_vec(), vec![18, 19]);
        assert_eq!(s.survivors.len() + s.outliers.len(), 18);
        let kept = s.survivors.to_vec();
        assert_eq!(kept, (6..=11).collect::<Vec<_>>(), "the middle ones");
        let (why, sel) = select(&cands[..19], 19, None).unwrap_err();
        assert_eq!(
            why,
            NoSelection::TooFewAgree {
                agreeing: 18,
                required: 19
            }
        );
        assert!(why.is_disagreement());
        assert_eq!(sel.falsetickers.to_vec(), vec![18]);
        assert_eq!(sel.survivors.to_vec(), (0..18).collect::<Vec<_>>());
    }
}
