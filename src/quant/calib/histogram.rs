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
#[derive(Clone, Debug, PartialEq)]
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

    /// Adds a batch of values.
    pub fn add(&mut self, xs: &[f32]) {
        self.count += xs.len() as u64;
        let batch_max = self.count_non_finite_and_max(xs);
        if batch_max > 0.0 {
            self.grow_to(batch_max as f64);
        }
        self.amax = self.amax.max(batch_max);
        let per_unit = NUM_BINS as f64 / self.range;
        for &x in xs {
            let a = x.abs();
            if a.is_finite() {
                self.bin_value(a, per_unit);
            }
        }
    }

    /// Counts NaN/inf in `xs` and returns the largest finite `|x|` (0 when none).
    fn count_non_finite_and_max(&mut self, xs: &[f32]) -> f32 {
        let mut max = 0.0f32;
        for &x in xs {
            let a = x.abs();
            if a.is_nan() {
                self.nan += 1;
            } else if a.is_infinite() {
                self.inf += 1;
            } else if a > max {
                max = a;
            }
        }
        max
    }

    /// Puts finite `a = |x|` into its bin (`per_unit = 2048 / range`; `range == 0` ⇒ `a == 0`).
    fn bin_value(&mut self, a: f32, per_unit: f64) {
        if self.range == 0.0 {
            self.bins[0] += 1;
            return;
        }
        let pos = a as f64 * per_unit;
        if pos >= NUM_BINS as f64 {
            self.at_top += 1;
            self.bins[NUM_BINS - 1] += 1;
        } else {
            self.bins[pos as usize] += 1;
        }
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
