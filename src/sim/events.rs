//! The simulator's future: request completions and replica starts, earliest
//! first. Completions are the hot path (about one per request and batch
//! change), so their heap entries are 16 bytes and compare as integers: the
//! bit patterns of non-negative floats sort like the numbers.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// What happens at an instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event {
    /// The earliest request on `replica` may be done, as scheduled when its
    /// batch was `generation` (a batch that changed since has rescheduled:
    /// the event is stale).
    Done { replica: usize, generation: u32 },
    /// `replica` finished loading.
    Ready { replica: usize },
}

#[derive(Debug, Clone, Copy)]
struct Done {
    t_bits: u64,
    replica: u32,
    generation: u32,
}

impl Done {
    fn key(&self) -> (u64, u32) {
        (self.t_bits, self.replica)
    }
}

impl PartialEq for Done {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Done {}

impl Ord for Done {
    /// Reversed, so the std max-heap pops the earliest; the replica breaks
    /// ties, which keeps runs reproducible.
    fn cmp(&self, other: &Self) -> Ordering {
        other.key().cmp(&self.key())
    }
}

impl PartialOrd for Done {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Pending events of one run.
#[derive(Debug, Clone, Default)]
pub struct Events {
    done: BinaryHeap<Done>,
    ready: BinaryHeap<Reverse<(u64, usize)>>,
}

/// Times are seconds since the trace's start, never negative; the clamp
/// keeps the bit-pattern order valid whatever a caller passes.
fn bits(t: f64) -> u64 {
    if t > 0.0 {
        t.to_bits()
    } else {
        0
    }
}

impl Events {
    pub fn done(&mut self, t: f64, replica: usize, generation: u32) {
        self.done.push(Done {
            t_bits: bits(t),
            // Replica ids count placements in one run: far below u32::MAX.
            replica: u32::try_from(replica).unwrap_or(u32::MAX),
            generation,
        });
    }

    pub fn ready(&mut self, t: f64, replica: usize) {
        self.ready.push(Reverse((bits(t), replica)));
    }

    /// When the next event happens.
    pub fn next_s(&self) -> Option<f64> {
        let d = self.done.peek().map(|d| d.t_bits);
        let r = self.ready.peek().map(|Reverse((t, _))| *t);
        match (d, r) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .map(f64::from_bits)
    }

    /// The earliest event and its time; a replica turning ready goes before
    /// a completion at the same instant, so the freed slot sees it.
    pub fn pop(&mut self) -> Option<(f64, Event)> {
        let d = self.done.peek().map(|d| d.t_bits);
        let r = self.ready.peek().map(|Reverse((t, _))| *t);
        let ready_first = match (d, r) {
            (None, None) => return None,
            (Some(d), Some(r)) => r <= d,
            (None, Some(_)) => true,
            (Some(_), None) => false,
        };
        if ready_first {
            let Reverse((t, replica)) = self.ready.pop()?;
            return Some((f64::from_bits(t), Event::Ready { replica }));
        }
        let d = self.done.pop()?;
        Some((
            f64::from_bits(d.t_bits),
            Event::Done {
                replica: d.replica as usize,
                generation: d.generation,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_time_order_with_starts_before_completions_on_ties() {
        let mut e = Events::default();
        e.done(3.5, 1, 2);
        e.done(0.25, 2, 0);
        e.ready(3.5, 7);
        e.done(100.0, 0, 9);
        assert_eq!(e.next_s(), Some(0.25));
        let order: Vec<(f64, Event)> = std::iter::from_fn(|| e.pop()).collect();
        assert_eq!(
            order,
            vec![
                (
                    0.25,
                    Event::Done {
                        replica: 2,
                        generation: 0
                    }
                ),
                (3.5, Event::Ready { replica: 7 }),
                (
                    3.5,
                    Event::Done {
                        replica: 1,
                        generation: 2
                    }
                ),
                (
                    100.0,
                    Event::Done {
                        replica: 0,
                        generation: 9
                    }
                ),
            ]
        );
        assert_eq!(e.next_s(), None);
    }

    #[test]
    fn float_bits_order_like_the_numbers() {
        let mut ts = [0.0, 1e-9, 0.5, 1.0, 1.5, 86_400.0, 1e12];
        ts.reverse();
        let mut e = Events::default();
        for (i, t) in ts.iter().enumerate() {
            e.done(*t, i, 0);
        }
        let popped: Vec<f64> = std::iter::from_fn(|| e.pop()).map(|(t, _)| t).collect();
        assert!(popped.windows(2).all(|w| w[0] < w[1]), "{popped:?}");
        assert_eq!(popped.len(), ts.len());
    }
}
