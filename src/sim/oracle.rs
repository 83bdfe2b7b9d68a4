//! The oracle: a clairvoyant lower bound on GPU-hours, the larger of two
//! bounds that each hold for every policy (property-tested).
//!
//! **Work bound.** Whatever a policy does, each request it serves needs its
//! service time (alone) of work, a replica completes at most `concurrency` ×
//! the full batch's speed of it per second, and only the part it must have
//! had done inside the trace's span is counted (see [`in_span_work`]). So
//! serving `k` requests costs at least the `k` smallest of those, packed perfectly into full replicas, with
//! no loading, no idle replica and no queue. The bound for an SLO share `s`
//! takes `k = ⌈s × N⌉`. Every policy also keeps the spec's `min_replicas`
//! placed the whole span, so the bound is at least that floor's GPU-hours.
//!
//! **Window bound** ([`WindowBound`]): whole replicas that must be loaded
//! before they serve. See its documentation for the argument.

use super::report::SloKind;
use super::serving::ServingModel;
use super::trace::Request;
use super::Trace;

/// Log-spaced buckets of in-span service time; a request is counted at its
/// bucket's lower edge, so the sum stays below the exact one (within 1%).
const BUCKETS: usize = 4096;
const SMALLEST_S: f64 = 1e-3;
const RATIO: f64 = 1.01;

/// In-span service times of a trace, bucketed in constant memory.
#[derive(Debug, Clone)]
pub struct ServiceBuckets {
    counts: Vec<u64>,
    requests: u64,
}

impl ServiceBuckets {
    pub fn of(
        requests: impl Iterator<Item = Request>,
        serving: &ServingModel,
        slo: (f64, SloKind),
        end_s: f64,
    ) -> Self {
        let mut b = ServiceBuckets {
            counts: vec![0; BUCKETS + 1],
            requests: 0,
        };
        for r in requests {
            let w = in_span_work(serving, &r, slo, end_s);
            b.counts[bucket(w)] += 1;
            b.requests += 1;
        }
        b
    }

    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// GPU-hours at least, for `share` (0..=1) of the requests within the
    /// SLO, with `gpus` per replica that completes at most `throughput`
    /// service seconds per second (its slots at the full batch's speed).
    pub fn gpu_hours(&self, share: f64, gpus: u32, throughput: f64) -> f64 {
        let mut k = (share.clamp(0.0, 1.0) * self.requests as f64 - 1e-9).ceil() as u64;
        let mut seconds = 0.0;
        for (i, n) in self.counts.iter().enumerate() {
            if k == 0 {
                break;
            }
            let take = (*n).min(k);
            seconds += take as f64 * lower_edge(i);
            k -= take;
        }
        seconds * f64::from(gpus) / throughput.max(f64::MIN_POSITIVE) / 3600.0
    }
}

/// Service seconds a request served within the SLO must have had done by
/// `end_s`. A request progresses at most at its speed alone (1 second of
/// work per second), and finishes by its deadline: `arrival + SLO` end to
/// end; with a TTFT SLO it is admitted by `arrival + SLO` and, never
/// preempted (the serving model's continuous batching), progresses at
/// least at the full batch's speed, so it finishes by `arrival + SLO +
/// work ÷ speed(concurrency)`. Whatever lies past `end_s` of that may be
/// done after the span, where nothing is counted.
fn in_span_work(
    serving: &ServingModel,
    r: &Request,
    (slo_s, kind): (f64, SloKind),
    end_s: f64,
) -> f64 {
    let w = serving.service_s(r);
    let finish_by = match kind {
        SloKind::E2e => r.arrival_s + slo_s,
        SloKind::Ttft => r.arrival_s + slo_s + w / serving.speed(serving.concurrency),
    };
    let w = w - (finish_by - end_s).max(0.0);
    if w.is_nan() {
        0.0
    } else {
        w.max(0.0)
    }
}

/// GPU-hours the spec's minimum alone costs over `span_s`: no policy
/// within the spec's bounds keeps fewer replicas placed at any instant.
pub fn floor_gpu_hours(min_replicas: u32, gpus: u32, span_s: f64) -> f64 {
    f64::from(min_replicas) * f64::from(gpus) * span_s.max(0.0) / 3600.0
}

/// The oracle's bound for one run: the larger of the work bound
/// ([`ServiceBuckets`]), the window bound ([`WindowBound`]) and the spec's
/// minimum held over the span, for any SLO share.
#[derive(Debug, Clone)]
pub struct Oracle {
    work: ServiceBuckets,
    windows: WindowBound,
    gpus: u32,
    throughput: f64,
    floor_gpu_hours: f64,
}

impl Oracle {
    pub fn of(
        trace: &Trace,
        serving: &ServingModel,
        slo_s: f64,
        slo_kind: SloKind,
        min_replicas: u32,
        gpus: u32,
    ) -> Self {
        let span_s = trace.duration_s();
        let window = WindowSetup {
            throughput: serving.peak_throughput(),
            min_start_s: serving.min_start_s(),
            slo_s,
            slo_kind,
            min_replicas,
            span_s,
        };
        Oracle {
            work: ServiceBuckets::of(trace.requests(), serving, (slo_s, slo_kind), span_s),
            windows: WindowBound::of(trace.requests(), serving, &window),
            gpus,
            throughput: serving.peak_throughput(),
            floor_gpu_hours: floor_gpu_hours(min_replicas, gpus, span_s),
        }
    }

    pub fn requests(&self) -> u64 {
        self.work.requests()
    }

    /// GPU-hours no policy reaching `share` of the requests within the SLO
    /// can use less of.
    pub fn gpu_hours(&self, share: f64) -> f64 {
        self.work
            .gpu_hours(share, self.gpus, self.throughput)
            .max(self.windows.gpu_hours(share, self.gpus))
            .max(self.floor_gpu_hours)
    }

    /// The work bound alone (with the floor): the oracle before the window
    /// bound, kept for comparison.
    pub fn work_gpu_hours(&self, share: f64) -> f64 {
        self.work
            .gpu_hours(share, self.gpus, self.throughput)
            .max(self.floor_gpu_hours)
    }
}

/// Seconds of the blocks the window bound splits the span into.
const BLOCK_S: f64 = 300.0;
/// Arrival spans (seconds) of the windows the window bound looks at.
const SPANS_S: [f64; 6] = [1.0, 2.0, 4.0, 6.0, 9.0, 13.0];

/// What the window bound needs to know about a run.
#[derive(Debug, Clone, Copy)]
pub struct WindowSetup {
    /// Service seconds a replica completes per second at most (its slots at
    /// the full batch's speed).
    pub throughput: f64,
    /// The shortest placement-to-ready time any replica can have.
    pub min_start_s: f64,
    pub slo_s: f64,
    pub slo_kind: SloKind,
    pub min_replicas: u32,
    /// The span GPU-hours are counted over.
    pub span_s: f64,
}

/// A request as the window bound sees it: `work` service seconds (alone)
/// that must be done between `arrival` and `due` if it is served within
/// the SLO.
#[derive(Debug, Clone, Copy)]
struct Job {
    arrival: f64,
    work: f64,
    due: f64,
}

/// The window bound: whole replicas, loaded before they serve.
///
/// Let `R(t)` be the replicas loaded and not yet stopped at `t` (ready or
/// draining: the ones that can work) and `L(t) ≥ R(t)` those placed (also
/// loading); GPU-hours are `gpus × ∫ L` over the span. Three facts hold
/// for every policy:
///
/// 1. A replica that can work at `u` was placed at least the shortest
///    start `σ` before (or at 0, already running), and stays placed until
///    `u`: so `L(t) ≥ R(u)` for every `t` in `[max(0, u − σ), u]`.
/// 2. A request served within an end-to-end SLO has all its work done in
///    `[arrival, arrival + SLO]` (with a TTFT SLO, the first token is
///    reported the prompt's time alone ÷ the batch's speed after
///    admission, so at least that time × the full batch's speed), and a
///    replica does at most `throughput` of work per second. So for a set of
///    such requests arriving in `[α, α + A)`, all due by `E`, the replicas
///    reach at least `n = ⌈work ÷ (throughput × (E − α))⌉` — whole ones —
///    at some instant `u` of `[α, E]`; by 1, `L ≥ n` all over
///    `[E − σ, α]`, whichever `u` it was.
/// 3. The requests due inside a block `B` need `∫_B R ≥ work ÷ throughput`,
///    and `L ≥ min_replicas`.
///
/// With `φ` the largest `n` of 2 over each second (at least the minimum),
/// `∫_B L ≥ ∫_B max(φ, R) ≥ ∫_B φ + (work_B ÷ throughput − ∫_B φ)⁺`.
/// Blocks are disjoint, so their bounds add up.
///
/// **Misses.** A policy at SLO share `s` may miss `M = N − ⌈s N⌉` requests
/// of its choosing. Each block's bound is computed for `m` misses in the
/// block (each window and the block's due work drop their `m` largest
/// requests — the most any `m` misses can remove), on a geometric grid of
/// `m` (a bound for the next grid point up holds for every `m` below it:
/// the bound only falls with `m`). The blocks then share the `M` misses:
/// for any `λ ≥ 0`, `min Σ g_B(m_B)` over `Σ m_B ≤ M` is at least
/// `Σ_B min_m (g_B(m) + λ m) − λ M` (weak duality); `λ` is searched, and
/// whatever it ends at the result is a bound.
#[derive(Debug, Clone, Default)]
pub struct WindowBound {
    /// Per block, `(m, replica-seconds at least with m misses)`, `m`
    /// increasing from 0.
    blocks: Vec<Vec<(u64, f64)>>,
    requests: u64,
    /// Requests no policy can serve within the SLO (their work alone
    /// exceeds it): always among the misses.
    impossible: u64,
}

impl WindowBound {
    pub fn of(
        requests: impl Iterator<Item = Request>,
        serving: &ServingModel,
        setup: &WindowSetup,
    ) -> Self {
        let mut out = WindowBound::default();
        let mut block = 0usize;
        let mut jobs: Vec<Job> = Vec::new();
        let blocks = (setup.span_s / BLOCK_S).ceil().max(0.0) as usize;
        for r in requests {
            out.requests += 1;
            let work = match setup.slo_kind {
                SloKind::E2e => serving.service_s(&r),
                // Its first token is reported the prompt's time alone ÷ the
                // batch's speed after admission, at least the full batch's
                // speed: that much work is done by then.
                SloKind::Ttft => {
                    f64::from(r.context_tokens) / serving.prefill_tps
                        * serving.speed(serving.concurrency)
                }
            };
            if work.is_nan() || work > setup.slo_s {
                out.impossible += 1;
                continue;
            }
            let job = Job {
                arrival: r.arrival_s,
                work,
                due: r.arrival_s + setup.slo_s,
            };
            // A request due after the span may be worked on after it, where
            // nothing is counted; one out of arrival order (or before the
            // block being built) is left out rather than misplaced.
            if !(job.arrival >= block as f64 * BLOCK_S && job.due <= setup.span_s) {
                continue;
            }
            let b = (job.arrival / BLOCK_S) as usize;
            while block < b {
                out.blocks.push(block_bound(block, &mut jobs, setup));
                jobs.clear();
                block += 1;
            }
            jobs.push(job);
        }
        while block < blocks {
            out.blocks.push(block_bound(block, &mut jobs, setup));
            jobs.clear();
            block += 1;
        }
        out
    }

    /// Replica-seconds at least, with at most `misses` requests missed.
    fn replica_seconds(&self, misses: u64) -> f64 {
        let at = |lambda: f64| -> f64 {
            let mut sum = -lambda * misses as f64;
            for b in &self.blocks {
                let mut best = b.first().map_or(0.0, |x| x.1);
                for w in b.windows(2) {
                    best = best.min(w[1].1 + lambda * (w[0].0 + 1) as f64);
                }
                sum += best;
            }
            sum
        };
        // Concave in λ: a golden-section search; any λ gives a bound.
        let mut hi = self
            .blocks
            .iter()
            .filter_map(|b| b.first().map(|x| x.1))
            .fold(0.0, f64::max);
        let mut lo = 0.0;
        let phi = (5f64.sqrt() - 1.0) / 2.0;
        let mut best = at(0.0).max(at(hi));
        for _ in 0..60 {
            let a = hi - phi * (hi - lo);
            let b = lo + phi * (hi - lo);
            let (fa, fb) = (at(a), at(b));
            best = best.max(fa).max(fb);
            if fa < fb {
                lo = a;
            } else {
                hi = b;
            }
        }
        best.max(0.0)
    }

    /// GPU-hours at least, for `share` (0..=1) of the requests within the
    /// SLO, with `gpus` per replica.
    pub fn gpu_hours(&self, share: f64, gpus: u32) -> f64 {
        let served = (share.clamp(0.0, 1.0) * self.requests as f64 - 1e-9).ceil() as u64;
        let misses = (self.requests - served.min(self.requests)).saturating_sub(self.impossible);
        self.replica_seconds(misses) * f64::from(gpus) / 3600.0
    }
}

/// Block `index`'s bound for a grid of miss counts; `jobs` are the block's
/// requests (all due within the span).
fn block_bound(index: usize, jobs: &mut [Job], setup: &WindowSetup) -> Vec<(u64, f64)> {
    jobs.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
    let start = index as f64 * BLOCK_S;
    let end = (start + BLOCK_S).min(setup.span_s);
    let slots = (end - start).ceil().max(0.0) as usize;
    let grid = miss_grid(jobs.len() as u64);
    let rate = setup.throughput.max(f64::MIN_POSITIVE);
    // φ per second of the block and grid point.
    let mut phi = vec![vec![0u64; grid.len()]; slots];
    let mut works: Vec<f64> = Vec::new();
    for span in SPANS_S {
        let mut first = 0;
        let mut last = 0;
        for s in 0..slots {
            let alpha = start + s as f64;
            while first < jobs.len() && jobs[first].arrival < alpha {
                first += 1;
            }
            last = last.max(first);
            while last < jobs.len() && jobs[last].arrival < alpha + span {
                last += 1;
            }
            let window = &jobs[first..last];
            if window.is_empty() {
                continue;
            }
            let due = window.iter().map(|j| j.due).fold(alpha, f64::max);
            // Seconds of the block wholly inside [due − σ, α].
            let lead_from = (due - setup.min_start_s - start).ceil().max(0.0) as usize;
            let lead_to = s; // exclusive: seconds before α
            if lead_from >= lead_to {
                continue;
            }
            works.clear();
            works.extend(window.iter().map(|j| j.work));
            let kept = kept_work(&mut works, &grid);
            let seconds = due - alpha;
            for (g, work) in kept.iter().enumerate() {
                let n = whole(work / (rate * seconds));
                if n == 0 {
                    continue;
                }
                for row in &mut phi[lead_from..lead_to] {
                    row[g] = row[g].max(n);
                }
            }
        }
    }
    works.clear();
    works.extend(jobs.iter().filter(|j| j.due <= end).map(|j| j.work));
    let due_work = kept_work(&mut works, &grid);
    let floor = u64::from(setup.min_replicas);
    grid.iter()
        .enumerate()
        .map(|(g, m)| {
            let held: f64 = phi
                .iter()
                .enumerate()
                .map(|(s, row)| {
                    let len = (end - (start + s as f64)).min(1.0);
                    len * row[g].max(floor) as f64
                })
                .sum();
            (*m, held + (due_work[g] / rate - held).max(0.0))
        })
        .collect()
}

/// 0, 1, 2, 3, 4, 6, 9, … (×1.5), ending with `n`.
fn miss_grid(n: u64) -> Vec<u64> {
    let mut grid = vec![0];
    let mut m = 1u64;
    while m < n {
        grid.push(m);
        m = (m + 1).max(m * 3 / 2);
    }
    if n > 0 {
        grid.push(n);
    }
    grid
}

/// The sum of `works` less its `m` largest, for each `m` of `grid`.
fn kept_work(works: &mut [f64], grid: &[u64]) -> Vec<f64> {
    works.sort_unstable_by(|a, b| b.total_cmp(a));
    let total: f64 = works.iter().sum();
    let mut out = Vec::with_capacity(grid.len());
    let mut removed = 0.0;
    let mut i = 0usize;
    for m in grid {
        while (i as u64) < *m && i < works.len() {
            removed += works[i];
            i += 1;
        }
        out.push((total - removed).max(0.0));
    }
    out
}

/// The fewest whole replicas whose mean is `x`, rounding float noise down.
fn whole(x: f64) -> u64 {
    if x.is_finite() && x > 0.0 {
        (x * (1.0 - 1e-9)).ceil() as u64
    } else {
        0
    }
}

fn bucket(w: f64) -> usize {
    // NaN lands here too: it is no measurable service time.
    if w.is_nan() || w < SMALLEST_S {
        return 0;
    }
    (1 + ((w / SMALLEST_S).ln() / RATIO.ln()).floor() as usize).min(BUCKETS)
}

fn lower_edge(i: usize) -> f64 {
    if i == 0 {
        0.0
    } else {
        SMALLEST_S * RATIO.powi(i as i32 - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_edges_never_exceed_the_value() {
        for w in [0.0, 5e-4, 1e-3, 0.5, 4.2, 100.0, 1e9] {
            assert!(lower_edge(bucket(w)) <= w, "{w}");
        }
        assert!(lower_edge(bucket(4.2)) > 4.2 / RATIO);
    }

    /// 1000 prompt tokens at 250/s + 0 generated = 4 s of work alone.
    fn serving() -> ServingModel {
        ServingModel {
            concurrency: 8,
            prefill_tps: 250.0,
            decode_tps: 50.0,
            batch_slowdown: 0.0,
            weights_bytes: 0,
            storage_bw: 1.0,
            cache_bw: 1.0,
            engine_init_s: 22.0,
        }
    }

    fn window_setup(min_replicas: u32) -> WindowSetup {
        WindowSetup {
            throughput: 8.0,
            min_start_s: 22.0,
            slo_s: 10.0,
            slo_kind: SloKind::E2e,
            min_replicas,
            span_s: 300.0,
        }
    }

    fn at(t: f64) -> Request {
        Request {
            arrival_s: t,
            context_tokens: 1000,
            generated_tokens: 0,
        }
    }

    /// 100 requests of 4 s at t = 100, due by 110: 400 s of work within
    /// 10 s needs 5 full replicas (8 s of work per second each) at some
    /// instant of [100, 110], so 5 placed all over [110 − 22, 100]: 12 s ×
    /// 5 = 60 replica-seconds, where the work alone asks for 400 / 8 = 50.
    #[test]
    fn a_burst_costs_whole_replicas_placed_a_start_ahead() {
        let burst = || (0..100).map(|_| at(100.0));
        let b = WindowBound::of(burst(), &serving(), &window_setup(0));
        assert!(
            (b.gpu_hours(1.0, 1) * 3600.0 - 60.0).abs() < 1e-6,
            "{}",
            b.gpu_hours(1.0, 1) * 3600.0
        );
        let work = ServiceBuckets::of(burst(), &serving(), (10.0, SloKind::E2e), 300.0)
            .gpu_hours(1.0, 1, 8.0)
            * 3600.0;
        assert!(work < 50.0 && work > 49.0, "{work}");
        // Two GPUs per replica: twice the GPU-hours.
        assert!((b.gpu_hours(1.0, 2) - 2.0 * b.gpu_hours(1.0, 1)).abs() < 1e-12);
    }

    /// Missing requests can only lower the bound, and missing all of them
    /// leaves the spec's minimum.
    #[test]
    fn the_bound_falls_with_the_share_down_to_the_minimum() {
        let burst = || (0..100).map(|_| at(100.0));
        let b = WindowBound::of(burst(), &serving(), &window_setup(1));
        let mut last = f64::INFINITY;
        for share in [1.0, 0.99, 0.9, 0.7, 0.5, 0.2, 0.0] {
            let g = b.gpu_hours(share, 1) * 3600.0;
            assert!(g <= last + 1e-9, "{share}: {g} > {last}");
            last = g;
        }
        assert!((last - 300.0).abs() < 1e-6, "{last}");
        // At full share: 12 s at 5 and 288 s at the minimum of 1.
        assert!((b.gpu_hours(1.0, 1) * 3600.0 - (60.0 + 288.0)).abs() < 1e-6);
    }

    /// A request whose work alone exceeds the SLO is a miss whatever the
    /// policy does: it takes none of the misses the share allows.
    #[test]
    fn impossible_requests_do_not_pay_for_misses() {
        let slow = Request {
            arrival_s: 50.0,
            context_tokens: 5000, // 20 s alone
            generated_tokens: 0,
        };
        let with = WindowBound::of(
            std::iter::once(slow).chain((0..100).map(|_| at(100.0))),
            &serving(),
            &window_setup(0),
        );
        let without = WindowBound::of((0..100).map(|_| at(100.0)), &serving(), &window_setup(0));
        assert_eq!(with.gpu_hours(100.0 / 101.0, 1), without.gpu_hours(1.0, 1));
    }

    /// A steady 1.5 replicas' worth of work with a short SLO needs 2 whole
    /// replicas placed nearly throughout: 13 s of arrivals must be worked
    /// off within 15 s (1.3 replicas' worth, so 2 at some instant), 7 s
    /// before which both must be placed. The work bound counts 1.5.
    #[test]
    fn steady_load_between_whole_replicas_counts_the_next_whole_one() {
        // 12 requests of 1 s per second: 12 s of work per second, 1.5 × 8.
        let one_s = |i: u32| Request {
            arrival_s: f64::from(i) / 12.0,
            context_tokens: 250,
            generated_tokens: 0,
        };
        let steady = || (0..300 * 12).map(one_s);
        let setup = WindowSetup {
            slo_s: 2.0,
            ..window_setup(0)
        };
        let b = WindowBound::of(steady(), &serving(), &setup).gpu_hours(1.0, 1) * 3600.0;
        let work = ServiceBuckets::of(steady(), &serving(), (2.0, SloKind::E2e), 300.0)
            .gpu_hours(1.0, 1, 8.0)
            * 3600.0;
        assert!(b > 1.8 * 300.0, "{b}");
        assert!(work < 1.5 * 300.0 + 1.0, "{work}");
        // With the 10 s SLO the same load may be spread over windows wide
        // enough that no instant needs 2: no more than the work's then
        // (the oracle takes the larger of the two).
        let long =
            WindowBound::of(steady(), &serving(), &window_setup(0)).gpu_hours(1.0, 1) * 3600.0;
        assert!(long < work + 1.0, "{long}");
    }

    /// Near the span's end a request served within the SLO may finish
    /// after it: only what must be done before the end counts (the first
    /// oracle counted up to `end − arrival`, more than a policy needs).
    #[test]
    fn work_that_may_finish_after_the_span_is_not_counted() {
        let s = serving(); // 4 s alone
        let e2e = (10.0, SloKind::E2e);
        assert_eq!(in_span_work(&s, &at(0.0), e2e, 300.0), 4.0);
        assert_eq!(in_span_work(&s, &at(292.0), e2e, 300.0), 2.0);
        assert_eq!(in_span_work(&s, &at(295.0), e2e, 300.0), 0.0);
        let slowed = ServingModel {
            batch_slowdown: 0.25, // 8 running: 1 / 2.75 of the speed alone
            ..s
        };
        // Admitted by 290 + 2, done by 292 + 4 × 2.75 = 303.
        assert!(
            (in_span_work(&slowed, &at(290.0), (2.0, SloKind::Ttft), 300.0) - 1.0).abs() < 1e-9
        );
    }

    #[test]
    fn the_miss_grid_covers_every_count() {
        assert_eq!(miss_grid(0), vec![0]);
        assert_eq!(miss_grid(1), vec![0, 1]);
        let g = miss_grid(1000);
        assert_eq!(g.first(), Some(&0));
        assert_eq!(g.last(), Some(&1000));
        assert!(g.windows(2).all(|w| w[0] < w[1]));
        assert!(g.len() < 30);
    }
}
