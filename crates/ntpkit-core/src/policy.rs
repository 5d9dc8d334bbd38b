//! Who a server answers: access rules and rate limiting, decided per request, sans-IO.
//!
//! * [`AccessList`]: ordered `allow NET` / `deny NET` rules, the first that matches the client's
//!   address wins; a denied client gets a DENY or RSTR kiss-o'-death or nothing, as the rule
//!   says. An empty list allows everybody; a list whose rules all miss denies.
//! * [`RateLimiter`]: per client network (an IPv4 address, or an IPv6 /64, by default), a
//!   generic cell rate algorithm: on average one request per `2^interval` seconds, bursts of
//!   `burst`. Over the limit one request in `2^kod_leak` gets a RATE kiss-o'-death (never
//!   longer than the request) and the rest nothing. The state is a fixed table of 4-way sets
//!   addressed by a keyed hash: O(1) per request, and no number of spoofed addresses can grow
//!   it (a new address takes the set's slot that is idlest, so a client being limited keeps
//!   its slot while floods of new addresses pass through the others).
//!
//! Both take the request's receive time in nanoseconds on any steady timescale (drivers pass
//! the kernel receive timestamp) and the hash key as an argument: nothing here reads a clock
//! or a random source.

use ntpkit_wire::KissCode;
use std::net::IpAddr;

/// A network: an address and a prefix length.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    /// The network of `addr`'s first `prefix` bits (clamped to the address length).
    pub fn new(addr: IpAddr, prefix: u8) -> Net {
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.min(bits);
        Net {
            addr: mask(addr, prefix),
            prefix,
        }
    }

    /// Every address, IPv4 and IPv6.
    pub const ALL: Option<Net> = None;

    /// True if `addr` is in the network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        addr.is_ipv4() == self.addr.is_ipv4() && mask(addr, self.prefix) == self.addr
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Net {
    type Err = String;

    /// `ADDR` (a single address) or `ADDR/PREFIX`.
    fn from_str(s: &str) -> Result<Net, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= bits => n,
                _ => return Err(format!("/{p} is not a prefix length of {addr} (0–{bits})")),
            },
        };
        Ok(Net::new(addr, prefix))
    }
}

/// IPv4-mapped IPv6 addresses as the IPv4 addresses they are.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// What a `deny` rule does with the request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Deny {
    /// Send nothing.
    Drop,
    /// Answer with a kiss-o'-death DENY (the client must stop).
    KissDeny,
    /// Answer with a kiss-o'-death RSTR (access restricted; the client must stop).
    KissRestrict,
}

/// One access rule.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Rule {
    /// Serve the network (`None`: everybody).
    Allow(Option<Net>),
    /// Refuse the network (`None`: everybody), as the [`Deny`] says.
    Deny(Option<Net>, Deny),
}

impl Rule {
    fn net(&self) -> Option<Net> {
        match *self {
            Rule::Allow(n) | Rule::Deny(n, _) => n,
        }
    }
}

impl std::str::FromStr for Rule {
    type Err = String;

    /// `allow NET`, `deny NET`, `deny NET kod`, `deny NET rstr`, `deny NET drop`; NET is an
    /// address, `ADDR/PREFIX` or `all`.
    fn from_str(s: &str) -> Result<Rule, String> {
        let words: Vec<&str> = s.split_whitespace().collect();
        let net = |w: &str| -> Result<Option<Net>, String> {
            if w == "all" {
                Ok(None)
            } else {
                w.parse().map(Some)
            }
        };
        let usage =
            "write `allow NET` or `deny NET [drop|kod|rstr]`, NET an address, ADDR/PREFIX or `all`";
        match words.as_slice() {
            ["allow", n] => Ok(Rule::Allow(net(n)?)),
            ["deny", n] => Ok(Rule::Deny(net(n)?, Deny::Drop)),
            ["deny", n, action] => {
                let deny = match *action {
                    "drop" => Deny::Drop,
                    "kod" | "deny" => Deny::KissDeny,
                    "rstr" => Deny::KissRestrict,
                    other => return Err(format!("{other:?} is not drop, kod or rstr; {usage}")),
                };
                Ok(Rule::Deny(net(n)?, deny))
            }
            _ => Err(format!("{s:?}: {usage}")),
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let net = |n: Option<Net>| n.map_or("all".to_string(), |n| n.to_string());
        match *self {
            Rule::Allow(n) => write!(f, "allow {}", net(n)),
            Rule::Deny(n, d) => write!(
                f,
                "deny {} {}",
                net(n),
                match d {
                    Deny::Drop => "drop",
                    Deny::KissDeny => "kod",
                    Deny::KissRestrict => "rstr",
                }
            ),
        }
    }
}

/// Ordered access rules; the first that matches wins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessList {
    rules: Vec<Rule>,
}

impl AccessList {
    /// Rules in order. No rules: everybody is served.
    pub fn new(rules: Vec<Rule>) -> Self {
        AccessList { rules }
    }

    /// Serves nobody (a daemon before `allow` is configured).
    pub fn nobody() -> Self {
        AccessList {
            rules: vec![Rule::Deny(None, Deny::Drop)],
        }
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// None if `addr` is served, else what to do with its request.
    pub fn check(&self, addr: IpAddr) -> Option<Deny> {
        if self.rules.is_empty() {
            return None;
        }
        for rule in &self.rules {
            if rule.net().is_none_or(|n| n.contains(addr)) {
                return match *rule {
                    Rule::Allow(_) => None,
                    Rule::Deny(_, d) => Some(d),
                };
            }
        }
        Some(Deny::Drop)
    }
}

/// Rate limiting settings.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RateLimit {
    /// A client network may send on average one request per `2^interval` seconds (−20…12;
    /// below −4 only to measure the limiter itself under a load it lets through).
    pub interval: i8,
    /// Requests it may send at once above that average (1…65535).
    pub burst: u16,
    /// Over the limit, one request in `2^kod_leak` gets a RATE kiss-o'-death, the rest nothing
    /// (0…16; 0: every one gets it).
    pub kod_leak: u8,
    /// Bits of an IPv4 address that make a client (default 32: each address).
    pub ipv4_prefix: u8,
    /// Bits of an IPv6 address that make a client (default 64: each /64).
    pub ipv6_prefix: u8,
    /// The table holds `2^table_bits` clients (4-way sets; 8…24).
    pub table_bits: u8,
}

impl Default for RateLimit {
    /// One request per second on average, bursts of 16, a RATE kiss to one in 16 over the
    /// limit; 16,384 clients remembered (256 KiB). An honest client never gets near: RFC 5905
    /// clients poll every 16 s or slower, and a start-up burst (4–8 requests 2 s apart) passes.
    fn default() -> Self {
        RateLimit {
            interval: 0,
            burst: 16,
            kod_leak: 4,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            table_bits: 14,
        }
    }
}

/// What the rate limiter decided.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RateVerdict {
    /// Within the limit.
    Serve,
    /// Over the limit: answer with a RATE kiss-o'-death.
    Kiss,
    /// Over the limit: send nothing.
    Drop,
}

/// One remembered client network.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// The high half of the key's hash (0: empty).
    tag: u32,
    /// Theoretical arrival time of the next request within the average rate, ns.
    tat: i64,
    /// Requests over the limit so far (for the kiss-o'-death fraction).
    over: u32,
}

const WAYS: usize = 4;

/// Per-client rate limiting; see the module docs.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    config: RateLimit,
    slots: Box<[Slot]>,
    /// Key of the hash (so that nobody can aim addresses at one set).
    key: [u64; 2],
    interval_ns: i64,
    tolerance_ns: i64,
}

impl RateLimiter {
    /// A limiter with `config`, its hash keyed with `key` (random, from the driver).
    pub fn new(config: RateLimit, key: [u64; 2]) -> Self {
        let bits = config.table_bits.clamp(8, 24);
        let interval_ns = crate::time::exp2(i32::from(config.interval.clamp(-20, 12))) * 1e9;
        RateLimiter {
            config,
            slots: vec![Slot::default(); 1 << bits].into_boxed_slice(),
            key,
            interval_ns: interval_ns as i64,
            tolerance_ns: (interval_ns * f64::from(config.burst.max(1) - 1)) as i64,
        }
    }

    /// The settings.
    pub fn config(&self) -> &RateLimit {
        &self.config
    }

    /// Decides about a request from `addr` received at `now` (ns).
    pub fn check(&mut self, addr: IpAddr, now: i64) -> RateVerdict {
        let addr = canonical(addr);
        let prefix = match addr {
            IpAddr::V4(_) => self.config.ipv4_prefix,
            IpAddr::V6(_) => self.config.ipv6_prefix,
        };
        let (key, v6) = match mask(addr, prefix) {
            IpAddr::V4(a) => (u128::from(u32::from(a)), false),
            IpAddr::V6(a) => (u128::from(a), true),
        };
        let hash = self.hash(key, v6);
        // The high half tells clients of one set apart (0 marks an empty slot), the low half
        // picks the set.
        let tag = ((hash >> 32) as u32).max(1);
        let sets = self.slots.len() / WAYS;
        let set = (hash as u32 as usize % sets) * WAYS;
        let ways = &mut self.slots[set..set + WAYS];
        let slot = match ways.iter().position(|s| s.tag == tag) {
            Some(i) => &mut ways[i],
            None => {
                // A new client takes the idlest slot of the set: the one whose theoretical
                // arrival time is earliest (the most credit); an empty slot first.
                let i = (0..WAYS)
                    .min_by_key(|&i| {
                        if ways[i].tag == 0 {
                            i64::MIN
                        } else {
                            ways[i].tat
                        }
                    })
                    .expect("WAYS > 0");
                ways[i] = Slot {
                    tag,
                    tat: now,
                    over: 0,
                };
                &mut ways[i]
            }
        };
        let tat = slot.tat.max(now);
        if tat - now <= self.tolerance_ns {
            slot.tat = tat + self.interval_ns;
            return RateVerdict::Serve;
        }
        slot.over = slot.over.wrapping_add(1);
        let leak = u32::from(self.config.kod_leak.min(16));
        if slot.over & ((1u32 << leak) - 1) == 0 {
            RateVerdict::Kiss
        } else {
            RateVerdict::Drop
        }
    }

    /// A keyed hash of a client key (SipHash-like mixing, enough to spread addresses the
    /// sender cannot predict the sets of).
    fn hash(&self, key: u128, v6: bool) -> u64 {
        let mut h = self.key[0] ^ (key as u64) ^ u64::from(v6);
        h = mix(h ^ self.key[1]);
        h = mix(h ^ ((key >> 64) as u64));
        mix(h ^ self.key[0].rotate_left(17))
    }
}

/// A 64-bit finalizer (from SplitMix64): every input bit affects every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What a server does about one client request, before answering it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Admission {
    /// Answer it.
    Serve,
    /// Answer with this kiss-o'-death instead.
    Kiss(KissCode),
    /// Send nothing: the access rules refuse the client.
    Denied,
    /// Send nothing: the client is over its rate.
    Limited,
}

/// Access rules and rate limiting together: the server's policy.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Who is served.
    pub access: AccessList,
    /// How often (None: no limit).
    pub rate: Option<RateLimiter>,
}

impl Policy {
    /// Decides about a request from `from` received at `now` (ns): the access rules first,
    /// then the rate (a refused client costs no rate state).
    pub fn admit(&mut self, from: IpAddr, now: i64) -> Admission {
        match self.access.check(from) {
            Some(Deny::Drop) => return Admission::Denied,
            Some(Deny::KissDeny) => return Admission::Kiss(KissCode::Deny),
            Some(Deny::KissRestrict) => return Admission::Kiss(KissCode::Restrict),
            None => {}
        }
        match self.rate.as_mut().map(|r| r.check(from, now)) {
            None | Some(RateVerdict::Serve) => Admission::Serve,
            Some(RateVerdict::Kiss) => Admission::Kiss(KissCode::Rate),
            Some(RateVerdict::Drop) => Admission::Limited,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_and_rules_parse_and_match() {
        let n: Net = "192.0.2.77/24".parse().unwrap();
        assert_eq!(n.to_string(), "192.0.2.0/24");
        assert!(n.contains(ip("192.0.2.1")) && !n.contains(ip("192.0.3.1")));
        assert!(n.contains(ip("::ffff:192.0.2.9")), "mapped IPv4 is IPv4");
        let v6: Net = "2001:db8::1/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("192.0.2.1")));
        assert!("10.0.0.0/33".parse::<Net>().is_err());
        assert!("host/8".parse::<Net>().is_err());
        let rules: Vec<Rule> = [
            "deny 192.0.2.7 kod",
            "deny 192.0.2.8 rstr",
            "allow 192.0.2.0/24",
            "deny all",
        ]
        .iter()
        .map(|r| r.parse().unwrap())
        .collect();
        assert_eq!(rules[0].to_string(), "deny 192.0.2.7/32 kod");
        let acl = AccessList::new(rules);
        assert_eq!(
            acl.check(ip("192.0.2.7")),
            Some(Deny::KissDeny),
            "first match wins"
        );
        assert_eq!(acl.check(ip("192.0.2.8")), Some(Deny::KissRestrict));
        assert_eq!(acl.check(ip("192.0.2.9")), None);
        assert_eq!(acl.check(ip("198.51.100.1")), Some(Deny::Drop));
        assert!("permit 1.2.3.4".parse::<Rule>().is_err());
        assert!("deny 1.2.3.4 maybe".parse::<Rule>().is_err());
        assert_eq!(
            AccessList::default().check(ip("192.0.2.1")),
            None,
            "no rules: all"
        );
        let only = AccessList::new(vec!["allow 127.0.0.0/8".parse().unwrap()]);
        assert_eq!(
            only.check(ip("10.0.0.1")),
            Some(Deny::Drop),
            "no match: denied"
        );
        assert_eq!(
            AccessList::nobody().check(ip("127.0.0.1")),
            Some(Deny::Drop)
        );
    }

    fn limiter(cfg: RateLimit) -> RateLimiter {
        RateLimiter::new(cfg, [0x1234_5678, 0x9abc_def0])
    }

    #[test]
    fn an_honest_client_and_a_start_up_burst_pass() {
        let mut r = limiter(RateLimit::default());
        let c = ip("192.0.2.1");
        // iburst: 8 requests 2 s apart, then every 16 s for a day.
        let mut t = 0;
        for _ in 0..8 {
            assert_eq!(r.check(c, t), RateVerdict::Serve);
            t += 2 * S;
        }
        for _ in 0..5400 {
            assert_eq!(r.check(c, t), RateVerdict::Serve);
            t += 16 * S;
        }
        // Polling every second (a test client) stays within the average too.
        for _ in 0..1000 {
            assert_eq!(r.check(c, t), RateVerdict::Serve);
            t += S;
        }
    }

    #[test]
    fn a_flood_gets_its_average_and_some_kisses() {
        let mut r = limiter(RateLimit::default());
        let c = ip("192.0.2.2");
        let (mut served, mut kissed, mut dropped) = (0, 0, 0);
        // 10,000 requests a second for 5 s.
        for k in 0..50_000i64 {
            match r.check(c, k * S / 10_000) {
                RateVerdict::Serve => served += 1,
                RateVerdict::Kiss => kissed += 1,
                RateVerdict::Drop => dropped += 1,
            }
        }
        assert!((16..=16 + 6).contains(&served), "burst + 1/s: {served}");
        let over = kissed + dropped;
        assert_eq!(kissed, over / 16, "one in 16 over the limit kissed");
        // Another address is not affected.
        assert_eq!(r.check(ip("192.0.2.3"), 5 * S), RateVerdict::Serve);
    }

    #[test]
    fn ipv6_clients_are_counted_per_64_and_the_table_stays_its_size() {
        let mut r = limiter(RateLimit {
            burst: 2,
            table_bits: 8,
            ..RateLimit::default()
        });
        let a = ip("2001:db8:1:2::1");
        let b = ip("2001:db8:1:2::ffff"); // the same /64
        assert_eq!(r.check(a, 0), RateVerdict::Serve);
        assert_eq!(r.check(b, 0), RateVerdict::Serve);
        assert_ne!(r.check(a, 0), RateVerdict::Serve, "the /64 used its burst");
        // A million spoofed addresses later, the table is the same size; a client being
        // limited mostly keeps its slot (its set's idlest slot goes first).
        let slots = r.slots.len();
        let victim = ip("192.0.2.50");
        for _ in 0..3 {
            r.check(victim, 0);
        }
        for k in 0..1_000_000u32 {
            r.check(IpAddr::V4(k.wrapping_mul(2_654_435_761).into()), 1);
        }
        assert_eq!(r.slots.len(), slots);
        assert_ne!(r.check(victim, 1), RateVerdict::Serve, "still limited");
        assert_eq!(std::mem::size_of::<Slot>(), 16);
    }

    #[test]
    fn policy_checks_access_before_rate() {
        let mut p = Policy {
            access: AccessList::new(vec![
                "deny 192.0.2.7 rstr".parse().unwrap(),
                "deny 192.0.2.8".parse().unwrap(),
                "allow all".parse().unwrap(),
            ]),
            rate: Some(limiter(RateLimit {
                burst: 1,
                kod_leak: 0,
                ..RateLimit::default()
            })),
        };
        assert_eq!(
            p.admit(ip("192.0.2.7"), 0),
            Admission::Kiss(KissCode::Restrict)
        );
        assert_eq!(p.admit(ip("192.0.2.8"), 0), Admission::Denied);
        assert_eq!(p.admit(ip("192.0.2.9"), 0), Admission::Serve);
        assert_eq!(p.admit(ip("192.0.2.9"), 0), Admission::Kiss(KissCode::Rate));
    }
}
