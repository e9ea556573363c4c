//! [`TensorStats`]: streaming statistics of one tensor's absolute values.
//!
//! # The histogram and what doubling costs
//!
//! The histogram has [`NUM_BINS`] = 2048 equal bins over `[0, range]`; bin `k` holds the values
//! with `k·w ≤ |x| < (k+1)·w` (`w = range / 2048`), and the last bin also holds `|x| = range`
//! (NumPy's closed last bin).
//!
//! - **First data.** `range` is set to the largest `|x|` of the first batch that has a non-zero
//!   finite value, so when all the data arrives in one batch the histogram is exactly
//!   `np.histogram(|x|, bins=2048, range=(0, amax))`: full resolution, `w = amax / 2048`.
//! - **Growth.** When a later batch has a larger `|x|`, `range` doubles (repeatedly, as needed) and
//!   each doubling merges bin pairs `(2k, 2k+1) → k` and empties the upper half. The bin index is
//!   `⌊|x| · (2048 / range)⌋` computed in `f64`; halving a power-of-two-scaled factor is exact, so
//!   a merged histogram is **bit-for-bit the histogram built directly with the final range** (see
//!   [`TensorStats::with_range`]). The one value a merge cannot place from the bin counts alone,
//!   `|x|` exactly equal to the old range (clamped into the old last bin but belonging to bin 1024
//!   of the doubled range), is counted separately and moved.
//! - **Resolution cost.** The final range is `range₀ · 2^m` with `amax ≤ range < 2·amax`, so the
//!   bin width is at most `amax / 1024`: in the worst case the data fills only the lower half of
//!   the bins, half the resolution of a histogram built on `[0, amax]`. Entropy and MSE search cut
//!   points from bin 128 on either way; percentile results are interpolated within a bin. (The
//!   TensorRT/pytorch-quantization collector instead appends bins of the first width, which keeps
//!   the resolution but lets the histogram grow without bound.)
//!
//! NaN and ±inf are counted apart and never enter `amax` or the histogram.

/// Number of histogram bins (TensorRT's default).
pub const NUM_BINS: usize = 2048;

/// Streaming statistics of one tensor's absolute values: element count, `amax` over the finite
/// values, NaN/inf counts, and a 2048-bin histogram of `|x|` over `[0, range]` whose range doubles
/// when a larger value arrives (see the [module docs](self) for the resolution this costs).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TensorStats {
    count: u64,
    amax: f32,
    nan: u64,
    inf: u64,
    /// `[0, range]`; 0 until a non-zero finite value arrives (zeros then sit in bin 0).
    range: f64,
    /// Values with `|x| == range` exactly (clamped into the last bin).
    at_top: u64,
    bins: Vec<u64>,
}

impl Default for TensorStats {
    fn default() -> Self {
        Self::new()
    }
}

impl TensorStats {
    /// Empty statistics; the histogram range is taken from the first non-zero batch.
    pub fn new() -> Self {
        TensorStats { count: 0, amax: 0.0, nan: 0, inf: 0, range: 0.0, at_top: 0, bins: vec![0; NUM_BINS] }
    }

    /// Empty statistics with the histogram range fixed to `range` up front (it still doubles if a
    /// larger value arrives). A non-positive or non-finite `range` behaves like [`TensorStats::new`].
    pub fn with_range(range: f32) -> Self {
        let mut s = Self::new();
        if range.is_finite() && range > 0.0 {
            s.range = range as f64;
        }
        s
    }

    /// True when the histogram has its [`NUM_BINS`] bins and a finite, non-negative range (what
    /// a statistic read back from the calibration cache must satisfy).
    pub fn is_well_formed(&self) -> bool {
        self.bins.len() == NUM_BINS && self.range.is_finite() && self.range >= 0.0
    }

    /// Adds a batch of values. Long batches are scanned and binned in parallel chunks: every
    /// count is an integer sum and `amax` a maximum, so the result is the serial one bit for bit.
    pub fn add(&mut self, xs: &[f32]) {
        self.count += xs.len() as u64;
        let scan = chunked(xs, Scan::of, Scan::merge).unwrap_or_default();
        (self.nan, self.inf) = (self.nan + scan.nan, self.inf + scan.inf);
        if scan.max > 0.0 {
            self.grow_to(scan.max as f64);
        }
        self.amax = self.amax.max(scan.max);
        let range = self.range;
        let Some(counts) = chunked(xs, |c| BinCounts::of(c, range), BinCounts::merge) else { return };
        self.at_top += counts.at_top;
        self.bins.iter_mut().zip(&counts.bins).for_each(|(b, c)| *b += c);
    }

    /// Makes `range ≥ max`: sets it on first data, else doubles it (merging bin pairs) as needed.
    fn grow_to(&mut self, max: f64) {
        if self.range == 0.0 {
            // Only zeros so far: they stay in bin 0 of any range.
            self.range = max;
            return;
        }
        while self.range < max {
            self.double();
        }
    }

    /// Doubles the range: bins `(2k, 2k+1)` merge into `k`; values exactly at the old range move
    /// from the merged last bin (1023) to bin 1024, where the doubled range puts them.
    fn double(&mut self) {
        let half = NUM_BINS / 2;
        for k in 0..half {
            self.bins[k] = self.bins[2 * k] + self.bins[2 * k + 1];
        }
        self.bins[half..].fill(0);
        self.bins[half - 1] -= self.at_top;
        self.bins[half] += self.at_top;
        self.at_top = 0;
        self.range *= 2.0;
    }

    /// Elements added, NaN and infinities included.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Largest finite `|x|` seen (0 when none).
    pub fn amax(&self) -> f32 {
        self.amax
    }

    /// NaNs seen.
    pub fn nan_count(&self) -> u64 {
        self.nan
    }

    /// Infinities seen.
    pub fn inf_count(&self) -> u64 {
        self.inf
    }

    /// The 2048 bin counts (finite values only).
    pub fn histogram(&self) -> &[u64] {
        &self.bins
    }

    /// Upper edge of the histogram (0 before any non-zero finite value).
    pub fn range(&self) -> f64 {
        self.range
    }

    /// Bin width, `range / 2048`.
    pub fn bin_width(&self) -> f64 {
        self.range / NUM_BINS as f64
    }

    /// Finite values seen (the histogram's total).
    pub fn finite_count(&self) -> u64 {
        self.count - self.nan - self.inf
    }
}

/// Elements per parallel chunk of [`TensorStats::add`] (shorter batches run serially).
const CHUNK: usize = 1 << 16;

/// `merge` of `per_chunk` over consecutive chunks of `xs` (in parallel when there are several);
/// `None` for an empty `xs`.
fn chunked<T: Send>(xs: &[f32], per_chunk: impl Fn(&[f32]) -> T + Sync + Send, merge: impl Fn(T, T) -> T + Sync + Send) -> Option<T> {
    use rayon::prelude::*;
    if xs.len() <= CHUNK {
        return (!xs.is_empty()).then(|| per_chunk(xs));
    }
    xs.par_chunks(CHUNK).map(per_chunk).reduce_with(merge)
}

/// NaN and ±inf counts and the largest finite `|x|` (0 when none) of a chunk.
#[derive(Default)]
struct Scan {
    nan: u64,
    inf: u64,
    max: f32,
}

impl Scan {
    fn of(xs: &[f32]) -> Self {
        let mut s = Scan::default();
        for a in xs.iter().map(|x| x.abs()) {
            if a.is_nan() {
                s.nan += 1;
            } else if a.is_infinite() {
                s.inf += 1;
            } else if a > s.max {
                s.max = a;
            }
        }
        s
    }

    fn merge(a: Self, b: Self) -> Self {
        Scan { nan: a.nan + b.nan, inf: a.inf + b.inf, max: a.max.max(b.max) }
    }
}

/// A chunk's finite `|x|` counted into the bins of `[0, range]`: bin `⌊|x| · 2048 / range⌋` in
/// `f64`, `|x| = range` (and above) into the last bin and `at_top`; `range == 0` (only zeros so
/// far) puts everything in bin 0.
struct BinCounts {
    bins: Vec<u64>,
    at_top: u64,
}

impl BinCounts {
    fn of(xs: &[f32], range: f64) -> Self {
        let mut c = BinCounts { bins: vec![0; NUM_BINS], at_top: 0 };
        let per_unit = NUM_BINS as f64 / range;
        for a in xs.iter().map(|x| x.abs()).filter(|a| a.is_finite()) {
            if range == 0.0 {
                c.bins[0] += 1;
                continue;
            }
            let pos = a as f64 * per_unit;
            if pos >= NUM_BINS as f64 {
                c.at_top += 1;
                c.bins[NUM_BINS - 1] += 1;
            } else {
                c.bins[pos as usize] += 1;
            }
        }
        c
    }

    fn merge(mut a: Self, b: Self) -> Self {
        a.at_top += b.at_top;
        a.bins.iter_mut().zip(&b.bins).for_each(|(x, y)| *x += y);
        a
    }
}
