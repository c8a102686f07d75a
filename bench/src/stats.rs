//! Latency recording: one HDR histogram per shard, shards picked per thread so that the
//! receivers on different runtime threads never contend, and a measurement window
//! ("step") at a time: deliveries of messages sent in another window are counted as
//! stale and kept out of the figures. Each shard also sums the byte length of the frames
//! it counts, so a window knows the mean size of what was delivered.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Highest latency the histograms track, in µs (larger values are clamped to it).
pub const MAX_TRACKED_US: u64 = 120_000_000;

/// A fresh latency histogram in µs, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_US, 3).expect("static bounds are valid")
}

/// Percentiles of a latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Latency {
    /// Summarises a histogram of µs samples.
    pub fn of(hist: &Histogram<u64>) -> Self {
        if hist.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: hist.len(),
            p50_ms: ms(hist.value_at_quantile(0.50)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            p999_ms: ms(hist.value_at_quantile(0.999)),
            max_ms: ms(hist.max()),
            mean_ms: hist.mean() / 1000.0,
        }
    }

    /// Summarises durations (connect times, …).
    pub fn of_durations(samples: &[Duration]) -> Self {
        let mut hist = new_histogram();
        for d in samples {
            hist.saturating_record(d.as_micros().clamp(1, u128::from(MAX_TRACKED_US)) as u64);
        }
        Self::of(&hist)
    }
}

/// One shard: the histogram, count and byte sum of the current window.
struct Shard {
    hist: Histogram<u64>,
    delivered: u64,
    /// Summed payload length of the counted frames: systems wrap the same content in
    /// envelopes of different sizes, and frame size alone moves latency.
    bytes: u64,
}

/// Where receivers record deliveries; the coordinator opens and closes windows.
pub struct Recorder {
    /// The window being measured; deliveries of other windows are stale.
    current: AtomicU32,
    shards: Vec<Mutex<Shard>>,
    /// Deliveries of messages from a window other than the current one.
    stale: AtomicU64,
}

/// What one window measured.
#[derive(Debug)]
pub struct Window {
    /// The merged histogram of the window, µs.
    pub hist: Histogram<u64>,
    /// Deliveries counted.
    pub delivered: u64,
    /// Summed payload length of the counted frames, bytes.
    pub bytes: u64,
}

impl Window {
    /// Mean payload length of the counted frames, bytes (0 when none was counted).
    pub fn mean_frame_bytes(&self) -> f64 {
        if self.delivered == 0 {
            0.0
        } else {
            self.bytes as f64 / self.delivered as f64
        }
    }
}

/// The window id no message carries: nothing is measured.
pub const NO_WINDOW: u32 = u32::MAX;

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static THREAD_INDEX: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

impl Recorder {
    /// A recorder with `shards` shards (at least the number of runtime threads).
    pub fn new(shards: usize) -> Self {
        Self {
            current: AtomicU32::new(NO_WINDOW),
            shards: (0..shards.max(1))
                .map(|_| {
                    Mutex::new(Shard {
                        hist: new_histogram(),
                        delivered: 0,
                        bytes: 0,
                    })
                })
                .collect(),
            stale: AtomicU64::new(0),
        }
    }

    /// Starts measuring window `step` (the previous one must have been taken).
    pub fn open(&self, step: u32) {
        self.current.store(step, Ordering::SeqCst);
    }

    /// Records the delivery of a message of window `step` after `latency_us`, in a frame
    /// of `frame_bytes` payload bytes.
    pub fn record(&self, step: u32, latency_us: u64, frame_bytes: usize) {
        if step != self.current.load(Ordering::Relaxed) {
            self.stale.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let index = THREAD_INDEX.with(|i| *i) % self.shards.len();
        let mut shard = self.shards[index].lock();
        shard.hist.saturating_record(latency_us.clamp(1, MAX_TRACKED_US));
        shard.delivered += 1;
        shard.bytes += frame_bytes as u64;
    }

    /// Deliveries counted in the current window so far.
    pub fn delivered(&self) -> u64 {
        self.shards.iter().map(|s| s.lock().delivered).sum()
    }

    /// Deliveries that arrived outside their window.
    pub fn stale(&self) -> u64 {
        self.stale.load(Ordering::Relaxed)
    }

    /// Closes the current window and returns its merged figures, resetting the shards.
    pub fn take(&self) -> Window {
        self.current.store(NO_WINDOW, Ordering::SeqCst);
        let mut window = Window {
            hist: new_histogram(),
            delivered: 0,
            bytes: 0,
        };
        for shard in &self.shards {
            let mut shard = shard.lock();
            window
                .hist
                .add(&shard.hist)
                .expect("same bounds, so add cannot fail");
            window.delivered += shard.delivered;
            window.bytes += shard.bytes;
            shard.hist.reset();
            shard.delivered = 0;
            shard.bytes = 0;
        }
        window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_out_in_milliseconds() {
        let mut hist = new_histogram();
        for us in 1..=1000u64 {
            hist.record(us * 100).expect("in range");
        }
        let lat = Latency::of(&hist);
        assert_eq!(lat.count, 1000);
        assert!((lat.p50_ms - 50.0).abs() < 0.1, "{lat:?}");
        assert!((lat.p99_ms - 99.0).abs() < 0.1, "{lat:?}");
        assert!((lat.max_ms - 100.0).abs() < 0.1, "{lat:?}");
    }

    #[test]
    fn an_empty_distribution_is_all_zero() {
        assert_eq!(Latency::of(&new_histogram()), Latency::default());
    }

    #[test]
    fn only_the_open_window_is_measured_and_late_ones_are_stale() {
        let rec = Recorder::new(4);
        rec.record(0, 10, 999); // nothing open yet
        rec.open(1);
        rec.record(1, 1_000, 300);
        rec.record(1, 3_000, 200);
        rec.record(0, 5, 999); // a late delivery of an earlier window
        assert_eq!(rec.delivered(), 2);
        let window = rec.take();
        assert_eq!(window.delivered, 2);
        assert!(window.hist.equivalent(window.hist.max(), 3_000));
        // Only the window's own frames count toward its mean size.
        assert_eq!(window.mean_frame_bytes(), 250.0);
        assert_eq!(rec.stale(), 2);
        // Taking resets: the next window starts empty.
        rec.open(2);
        assert_eq!(rec.delivered(), 0);
        assert_eq!(rec.take().mean_frame_bytes(), 0.0);
    }

    #[test]
    fn deliveries_from_many_threads_are_all_counted() {
        let rec = std::sync::Arc::new(Recorder::new(2));
        rec.open(0);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let rec = rec.clone();
                std::thread::spawn(move || (0..1000).for_each(|i| rec.record(0, i + 1, 160)))
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().expect("thread"));
        let window = rec.take();
        assert_eq!(window.delivered, 4000);
        assert_eq!(window.bytes, 4000 * 160);
        assert_eq!(window.mean_frame_bytes(), 160.0);
    }

    #[test]
    fn connect_durations_are_summarised() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let lat = Latency::of_durations(&d);
        assert_eq!(lat.count, 100);
        assert!((lat.p99_ms - 99.0).abs() < 0.2, "{lat:?}");
    }
}
