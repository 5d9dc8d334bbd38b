//! Random streams: one Xoshiro256++ generator per node and per link direction (and NTS's own
//! per link and per server), each seeded from the run's seed, a stream kind and an index
//! through SplitMix64, so that adding a node or a link never shifts another's numbers.

use rand_core::{RngCore, SeedableRng};
use rand_distr::{Distribution, Exp1, StandardNormal};
use rand_xoshiro::Xoshiro256PlusPlus;

/// The generator every stream uses.
pub type Rng = Xoshiro256PlusPlus;

/// What a stream drives (part of its seed).
#[derive(Clone, Copy, Debug)]
#[repr(u64)]
pub enum StreamKind {
    /// A node's core (request cookies, poll randomization).
    Core = 1,
    /// A node's oscillator (wander) and its initial spreads.
    Clock = 2,
    /// A link's request direction (client → server).
    Request = 3,
    /// A link's reply direction (server → client).
    Reply = 4,
    /// A link's NTS client: association keys, unique identifiers, nonces, key-exchange
    /// losses, tampering. NTS has streams of its own so that turning it on changes no other
    /// draw.
    NtsClient = 5,
    /// A link's NTS server side: the nonces of the cookies it makes for that client.
    NtsServer = 6,
    /// A node's NTS cookie masters.
    NtsMaster = 7,
}

/// SplitMix64's output function (Steele, Lea, Flood 2014).
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The stream of `kind` number `index` for a run seeded with `seed`.
pub fn stream(seed: u64, kind: StreamKind, index: u64) -> Rng {
    let s = splitmix64(splitmix64(splitmix64(seed) ^ kind as u64) ^ index);
    Rng::seed_from_u64(s)
}

/// Uniform in [0, 1) with 53 random bits.
pub fn uniform(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Standard normal (the ziggurat method of `rand_distr`: no logarithm or sine on its fast path,
/// which matters because every clock read with wander draws two).
pub fn normal(rng: &mut Rng) -> f64 {
    StandardNormal.sample(rng)
}

/// Exponential with mean 1 (ziggurat, `rand_distr`).
pub fn exponential(rng: &mut Rng) -> f64 {
    Exp1.sample(rng)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_and_repeat() {
        let a: Vec<u64> = (0..4)
            .map(|_| stream(1, StreamKind::Core, 0).next_u64())
            .collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(
            stream(1, StreamKind::Core, 0).next_u64(),
            stream(1, StreamKind::Core, 1).next_u64()
        );
        assert_ne!(
            stream(1, StreamKind::Core, 0).next_u64(),
            stream(1, StreamKind::Clock, 0).next_u64()
        );
        assert_ne!(
            stream(1, StreamKind::Core, 0).next_u64(),
            stream(2, StreamKind::Core, 0).next_u64()
        );
    }

    #[test]
    fn moments_are_right() {
        let mut r = stream(9, StreamKind::Clock, 0);
        let n = 200_000;
        let (mut s, mut ss, mut e) = (0.0, 0.0, 0.0);
        for _ in 0..n {
            let x = normal(&mut r);
            s += x;
            ss += x * x;
            e += exponential(&mut r);
        }
        let n = n as f64;
        assert!((s / n).abs() < 0.01);
        assert!((ss / n - 1.0).abs() < 0.02);
        assert!((e / n - 1.0).abs() < 0.02);
    }
}
