//! Who may hold a place among the connections still in their TLS handshake:
//! a bounded pool, a bound per source, and which connection makes room for a
//! newcomer. Pure bookkeeping (no I/O, no clock: times are arguments), so the
//! rules are tested as tables; `edge` performs the closes it decides.
//!
//! The rules, in order, for a new connection from source S:
//!
//! 1. S already holds `per_source` handshakes: the oldest of S's handshakes
//!    that has sent nothing yet is closed to make room; if all of S's have
//!    sent something, S's oldest is closed.
//! 2. The pool holds `capacity` handshakes: room is made among the sources
//!    that hold the most handshakes: the oldest of their handshakes that has
//!    sent nothing yet, else the oldest of theirs. A flood from a few sources
//!    therefore only ever pushes out its own connections, never a newcomer
//!    from a source holding fewer.
//! 3. Otherwise the connection simply takes a place.
//!
//! Making room instead of refusing the newcomer is what defeats a flood: a
//! legitimate client sends its ClientHello at once and finishes in a few
//! round trips, so to push it out an attacker must open `capacity` (or, from
//! its own source, `per_source`) newer connections within that time, rather
//! than merely keep `capacity` silent ones open. Silent connections go first
//! because they are the cheapest to hold.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// The handshakes in progress on one listener; each entry holds the signal
/// that closes it.
pub type SharedHandshakePool = std::sync::Arc<std::sync::Mutex<HandshakePool<tokio::sync::oneshot::Sender<()>>>>;

/// Where a connection comes from, for the per-source bound: an IPv4 address,
/// or an IPv6 /64 (one subscriber's usual allocation; an IPv4 address mapped
/// into IPv6 counts as that IPv4 address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

impl Source {
    pub fn of(address: IpAddr) -> Source {
        match address {
            IpAddr::V4(v4) => Source::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.octets()),
                None => {
                    let octets = v6.octets();
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(&octets[..8]);
                    Source::V6Prefix(prefix)
                }
            },
        }
    }
}

/// A handshake's place in the pool.
pub type Ticket = u64;

#[derive(Debug)]
struct Entry<T> {
    source: Source,
    /// Whether the peer has sent any byte yet.
    spoke: bool,
    /// What the caller needs to close the connection (a signal).
    handle: T,
}

/// What happened to a new connection.
#[derive(Debug, PartialEq, Eq)]
pub struct Admission<T> {
    pub ticket: Ticket,
    /// The handshake closed to make room, if one was.
    pub evicted: Option<(Ticket, T)>,
}

/// The handshakes in progress. Tickets grow with arrival, so the smallest
/// ticket is the oldest connection.
#[derive(Debug)]
pub struct HandshakePool<T> {
    capacity: usize,
    per_source: usize,
    next: Ticket,
    entries: BTreeMap<Ticket, Entry<T>>,
}

impl<T> HandshakePool<T> {
    /// `capacity` and `per_source` are at least 1.
    pub fn new(capacity: usize, per_source: usize) -> HandshakePool<T> {
        HandshakePool {
            capacity: capacity.max(1),
            per_source: per_source.clamp(1, capacity.max(1)),
            next: 0,
            entries: BTreeMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Gives a new connection from `source` a place, closing another
    /// handshake if the rules above say so.
    pub fn admit(&mut self, source: Source, handle: T) -> Admission<T> {
        let from_source = self.entries.values().filter(|entry| entry.source == source).count();
        let victim = if from_source >= self.per_source {
            self.oldest(|entry| entry.source == source)
        } else if self.entries.len() >= self.capacity {
            let heaviest = self.heaviest_sources();
            self.oldest(|entry| heaviest.contains(&entry.source))
        } else {
            None
        };
        let evicted = victim.and_then(|ticket| self.entries.remove(&ticket).map(|entry| (ticket, entry.handle)));
        let ticket = self.next;
        self.next += 1;
        self.entries.insert(
            ticket,
            Entry {
                source,
                spoke: false,
                handle,
            },
        );
        Admission { ticket, evicted }
    }

    /// The sources holding the most entries.
    fn heaviest_sources(&self) -> std::collections::BTreeSet<Source> {
        let mut held: BTreeMap<Source, usize> = BTreeMap::new();
        for entry in self.entries.values() {
            *held.entry(entry.source).or_default() += 1;
        }
        let most = held.values().copied().max().unwrap_or(0);
        held.into_iter()
            .filter(|(_, count)| *count == most)
            .map(|(source, _)| source)
            .collect()
    }

    /// The oldest silent entry among those `matching`, else the oldest.
    fn oldest(&self, matching: impl Fn(&Entry<T>) -> bool) -> Option<Ticket> {
        let mut oldest = None;
        for (ticket, entry) in self.entries.iter().filter(|(_, entry)| matching(entry)) {
            if !entry.spoke {
                return Some(*ticket);
            }
            oldest.get_or_insert(*ticket);
        }
        oldest
    }

    /// The peer behind `ticket` sent its first bytes.
    pub fn spoke(&mut self, ticket: Ticket) {
        if let Some(entry) = self.entries.get_mut(&ticket) {
            entry.spoke = true;
        }
    }

    /// The handshake ended (done, failed, timed out or closed); a ticket
    /// already evicted is ignored.
    pub fn finish(&mut self, ticket: Ticket) {
        self.entries.remove(&ticket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(last: u8) -> Source {
        Source::V4([10, 0, 0, last])
    }

    /// One step of a table: a connection arrives from a source, or a ticket
    /// speaks or finishes.
    enum Step {
        Arrive(Source),
        Speak(Ticket),
        Finish(Ticket),
    }
    use Step::*;

    /// Runs the steps on a pool of (capacity, per_source) and returns, for
    /// each arrival, the ticket it evicted.
    fn run(capacity: usize, per_source: usize, steps: &[Step]) -> Vec<Option<Ticket>> {
        let mut pool = HandshakePool::new(capacity, per_source);
        let mut evictions = Vec::new();
        for step in steps {
            match step {
                Arrive(source) => {
                    let admission = pool.admit(*source, ());
                    evictions.push(admission.evicted.map(|(ticket, ())| ticket));
                }
                Speak(ticket) => pool.spoke(*ticket),
                Finish(ticket) => pool.finish(*ticket),
            }
            assert!(pool.len() <= capacity, "the pool grew past its capacity");
        }
        evictions
    }

    #[test]
    fn a_pool_with_room_evicts_nobody() {
        assert_eq!(
            run(3, 3, &[Arrive(v4(1)), Arrive(v4(2)), Arrive(v4(3))]),
            [None, None, None]
        );
    }

    #[test]
    fn a_full_pool_closes_its_oldest_silent_handshake() {
        let cases: &[(&[Step], &[Option<Ticket>])] = &[
            // All silent: the oldest goes.
            (&[Arrive(v4(1)), Arrive(v4(2)), Arrive(v4(3))], &[None, None, Some(0)]),
            // Ticket 0 spoke: the oldest silent one (1) goes instead.
            (
                &[Arrive(v4(1)), Arrive(v4(2)), Speak(0), Arrive(v4(3))],
                &[None, None, Some(1)],
            ),
            // Everyone spoke: the oldest of all goes.
            (
                &[Arrive(v4(1)), Arrive(v4(2)), Speak(0), Speak(1), Arrive(v4(3))],
                &[None, None, Some(0)],
            ),
            // A finished handshake frees its place.
            (
                &[Arrive(v4(1)), Arrive(v4(2)), Finish(0), Arrive(v4(3))],
                &[None, None, None],
            ),
        ];
        for (index, (steps, expected)) in cases.iter().enumerate() {
            assert_eq!(run(2, 2, steps), *expected, "case {index}");
        }
    }

    #[test]
    fn a_source_at_its_bound_makes_room_among_its_own() {
        let cases: &[(&[Step], &[Option<Ticket>])] = &[
            // Source 1 holds two; its third pushes out its own oldest, not
            // source 2's older handshake.
            (
                &[Arrive(v4(2)), Arrive(v4(1)), Arrive(v4(1)), Arrive(v4(1))],
                &[None, None, None, Some(1)],
            ),
            // Its own silent one goes before its own speaking one.
            (
                &[Arrive(v4(1)), Arrive(v4(1)), Speak(0), Arrive(v4(1))],
                &[None, None, Some(1)],
            ),
        ];
        for (index, (steps, expected)) in cases.iter().enumerate() {
            assert_eq!(run(10, 2, steps), *expected, "case {index}");
        }
    }

    #[test]
    fn a_flood_of_silent_connections_never_pushes_out_one_that_spoke() {
        // 8 flooding sources, each reconnecting as soon as it is closed; one
        // legitimate handshake that sent its ClientHello survives any number
        // of them.
        let mut pool = HandshakePool::new(16, 4);
        let legitimate = pool.admit(v4(200), "legitimate").ticket;
        pool.spoke(legitimate);
        for round in 0..10_000u32 {
            let admission = pool.admit(v4((round % 8) as u8), "flood");
            if let Some((ticket, handle)) = admission.evicted {
                assert_ne!(ticket, legitimate, "round {round}");
                assert_eq!(handle, "flood");
            }
        }
        assert_eq!(pool.len(), 16);
    }

    #[test]
    fn a_full_pool_makes_room_in_its_heaviest_source() {
        // Source 1 holds two, source 2 one (older): source 3's newcomer
        // pushes out source 1's oldest, not source 2's.
        assert_eq!(
            run(3, 3, &[Arrive(v4(2)), Arrive(v4(1)), Arrive(v4(1)), Arrive(v4(3))]),
            [None, None, None, Some(1)]
        );
    }

    #[test]
    fn a_flood_from_sources_at_their_bound_never_pushes_out_a_silent_newcomer() {
        // 8 sources at their bound of 2 fill a pool of 16; a newcomer from
        // another source has not spoken yet. Each flood connection pushed
        // out comes back at once: the room is always made among the flood.
        let mut pool = HandshakePool::new(16, 2);
        for round in 0..16u8 {
            pool.admit(v4(round % 8), "flood");
        }
        let newcomer = pool.admit(v4(200), "newcomer");
        assert!(newcomer.evicted.is_some());
        let mut pushed_out = newcomer.evicted.map(|(_, handle)| handle);
        for round in 0..10_000u32 {
            // The source of the connection just pushed out reconnects (any
            // flood source will do: they are all at or near their bound).
            let admission = pool.admit(v4((round % 8) as u8), "flood");
            if let Some((ticket, handle)) = admission.evicted {
                assert_ne!(ticket, newcomer.ticket, "round {round}");
                pushed_out = Some(handle);
            }
        }
        assert_eq!(pushed_out, Some("flood"));
        assert_eq!(pool.len(), 16);
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_slash_64s() {
        let source = |text: &str| Source::of(text.parse().unwrap());
        assert_eq!(source("192.0.2.1"), source("::ffff:192.0.2.1"));
        assert_ne!(source("192.0.2.1"), source("192.0.2.2"));
        assert_eq!(source("2001:db8:1:2::1"), source("2001:db8:1:2:ffff::9"));
        assert_ne!(source("2001:db8:1:2::1"), source("2001:db8:1:3::1"));
    }
}
