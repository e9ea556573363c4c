//! Per-input-channel statistics of the activations entering a linear layer, accumulated over
//! calibration batches: what SmoothQuant (`absmax`), AWQ (mean |x| and sample rows) and GPTQ (the
//! Hessian `XᵀX`) need.
//!
//! Non-finite activation values (NaN, ±inf) are treated as absent: they enter no statistic (they
//! count as 0 in `XᵀX` and in stored sample rows, and are left out of `absmax` and of the mean),
//! and [`ChannelStats::nonfinite`] counts them.

use super::mat::{gemm, View};
use super::{invalid, Result};

/// Rows converted to `f64` per `XᵀX` update (bounds the temporary to `HESSIAN_ROWS × K` values).
const HESSIAN_ROWS: usize = 256;

/// Seed of the reservoir sampler: samples depend only on the sequence of rows observed.
const RESERVOIR_SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// Accumulated statistics of activation rows `[·, K]`; see the module doc.
#[derive(Clone, Debug)]
pub struct ChannelStats {
    k: usize,
    rows: u64,
    nonfinite: u64,
    absmax: Vec<f32>,
    abs_sum: Vec<f64>,
    finite: Vec<u64>,
    xtx: Option<Vec<f64>>,
    /// `Σ_i ‖x_i‖⁴` over the rows (kept with `xtx`): the fourth moment Ledoit–Wolf shrinkage needs.
    norm4: f64,
    sample: Option<Reservoir>,
}

/// Uniform reservoir sample (Vitter's algorithm R) of at most `cap` rows, with a fixed-seed xorshift.
#[derive(Clone, Debug)]
struct Reservoir {
    cap: usize,
    rows: Vec<f32>,
    seen: u64,
    state: u64,
}

impl Reservoir {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Offers one (already sanitized) row.
    fn offer(&mut self, row: &[f32]) {
        let k = row.len();
        let filled = self.rows.len() / k;
        if filled < self.cap {
            self.rows.extend_from_slice(row);
        } else {
            let j = self.next() % (self.seen + 1);
            if (j as usize) < self.cap {
                self.rows[j as usize * k..(j as usize + 1) * k].copy_from_slice(row);
            }
        }
        self.seen += 1;
    }
}

impl ChannelStats {
    /// Empty statistics of `k` channels (no Hessian, no samples; see the `with_*` builders).
    pub fn new(k: usize) -> Result<Self> {
        if k == 0 {
            return invalid("ChannelStats: K must be at least 1");
        }
        Ok(ChannelStats {
            k,
            rows: 0,
            nonfinite: 0,
            absmax: vec![0.0; k],
            abs_sum: vec![0.0; k],
            finite: vec![0; k],
            xtx: None,
            norm4: 0.0,
            sample: None,
        })
    }

    /// Also accumulates `XᵀX` (`K × K`, `f64`; `8·K²` bytes) for GPTQ.
    pub fn with_hessian(mut self) -> Self {
        self.xtx = Some(vec![0.0; self.k * self.k]);
        self
    }

    /// Also keeps a uniform sample of at most `max_rows` rows (reservoir sampling with a fixed seed:
    /// the sample depends only on the sequence of rows, not on how they are split into calls).
    pub fn with_samples(mut self, max_rows: usize) -> Self {
        self.sample = Some(Reservoir { cap: max_rows, rows: Vec::new(), seen: 0, state: RESERVOIR_SEED });
        self
    }

    /// Adds `rows` (row-major, `K` values per row). Errors when `k` differs from the channel count or
    /// the values do not form whole rows; the statistics are then unchanged.
    pub fn observe(&mut self, rows: &[f32], k: usize) -> Result<()> {
        if k != self.k {
            return invalid(format!("ChannelStats: rows of {k} channels fed to statistics of {} channels", self.k));
        }
        if rows.len() % k != 0 {
            return invalid(format!("ChannelStats: {} values are not whole rows of {k}", rows.len()));
        }
        for chunk in rows.chunks(HESSIAN_ROWS * k) {
            let clean = self.channels(chunk);
            if let Some(s) = &mut self.sample {
                clean.chunks(k).for_each(|r| s.offer(r));
            }
            if let Some(h) = &mut self.xtx {
                let x: Vec<f64> = clean.iter().map(|&v| f64::from(v)).collect();
                let m = x.len() / k;
                gemm(h, k, (k, k, m), View::rows(&x, k).t(), View::rows(&x, k), Some(1.0), 1.0);
                self.norm4 += x.chunks(k).map(|r| r.iter().map(|v| v * v).sum::<f64>().powi(2)).sum::<f64>();
            }
            self.rows += (chunk.len() / k) as u64;
        }
        Ok(())
    }

    /// Updates `absmax`, the |x| sums and the non-finite count; returns the rows with non-finite
    /// values replaced by 0.
    fn channels(&mut self, chunk: &[f32]) -> Vec<f32> {
        let mut clean = chunk.to_vec();
        for row in clean.chunks_mut(self.k) {
            for (j, v) in row.iter_mut().enumerate() {
                if v.is_finite() {
                    let a = v.abs();
                    self.absmax[j] = self.absmax[j].max(a);
                    self.abs_sum[j] += f64::from(a);
                    self.finite[j] += 1;
                } else {
                    self.nonfinite += 1;
                    *v = 0.0;
                }
            }
        }
        clean
    }

    /// Channels `K`.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Rows observed.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Non-finite values skipped.
    pub fn nonfinite(&self) -> u64 {
        self.nonfinite
    }

    /// Per-channel `max |x|` over the finite values (0 for a channel never seen finite).
    pub fn absmax(&self) -> &[f32] {
        &self.absmax
    }

    /// Per-channel mean `|x|` over the finite values (0 for a channel never seen finite).
    pub fn mean_abs(&self) -> Vec<f32> {
        self.abs_sum.iter().zip(&self.finite).map(|(&s, &c)| if c == 0 { 0.0 } else { (s / c as f64) as f32 }).collect()
    }

    /// The accumulated `XᵀX` (`K × K` row-major), when enabled with [`Self::with_hessian`].
    pub fn xtx(&self) -> Option<&[f64]> {
        self.xtx.as_deref()
    }

    /// Ledoit–Wolf shrinkage of the second-moment matrix `S = XᵀX/M` towards `μ·I`
    /// (`μ = tr S / K`), as the equivalent relative dampening `δ / (1 − δ)`: `(1 − δ)·S + δ·μ·I` is
    /// `S + δ/(1 − δ)·μ·I` up to a factor, which is GPTQ's dampening with that `percdamp`.
    /// `δ = min(b², d²) / d²` with `d² = ‖S − μI‖²_F` and `b² = (Σ_i ‖x_i‖⁴ − M·‖S‖²_F) / M²`, the
    /// estimated variance of the rows' outer products around `S` (Ledoit & Wolf 2004, without
    /// centring: GPTQ's Hessian is the uncentred `XᵀX`). Few rows against `K` give a noisy `S` and a
    /// large `δ`; many rows a small one. `None` without `XᵀX` or rows, `Some(∞)` for `δ = 1`.
    pub fn shrinkage_damp(&self) -> Option<f64> {
        let xtx = self.xtx.as_ref()?;
        if self.rows == 0 {
            return None;
        }
        let (k, m) = (self.k, self.rows as f64);
        let s_norm2 = xtx.iter().map(|v| (v / m).powi(2)).sum::<f64>();
        let mu = (0..k).map(|j| xtx[j * k + j] / m).sum::<f64>() / k as f64;
        let d2 = s_norm2 - k as f64 * mu * mu;
        let b2 = ((self.norm4 - m * s_norm2) / (m * m)).max(0.0).min(d2);
        if d2 <= 0.0 {
            return Some(0.0);
        }
        let delta = b2 / d2;
        Some(if delta >= 1.0 { f64::INFINITY } else { delta / (1.0 - delta) })
    }

    /// The sampled rows (`[·, K]` row-major, at most `max_rows`), when enabled with
    /// [`Self::with_samples`].
    pub fn samples(&self) -> Option<&[f32]> {
        self.sample.as_ref().map(|s| s.rows.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_skip_nonfinite_values() {
        let mut s = ChannelStats::new(2).unwrap().with_hessian().with_samples(8);
        s.observe(&[1.0, -2.0, f32::NAN, 4.0, -3.0, f32::INFINITY], 2).unwrap();
        assert_eq!(s.rows(), 3);
        assert_eq!(s.nonfinite(), 2);
        assert_eq!(s.absmax(), &[3.0, 4.0]);
        assert_eq!(s.mean_abs(), vec![2.0, 3.0]);
        // Rows [1,-2], [0,4], [-3,0].
        assert_eq!(s.xtx().unwrap(), &[10.0, -2.0, -2.0, 20.0]);
        assert_eq!(s.samples().unwrap(), &[1.0, -2.0, 0.0, 4.0, -3.0, 0.0]);
        assert!(s.observe(&[1.0; 3], 3).is_err());
        assert!(s.observe(&[1.0; 3], 2).is_err());
        assert_eq!(s.rows(), 3);
    }

    #[test]
    fn reservoir_is_independent_of_batching() {
        let rows: Vec<f32> = (0..3000).map(|i| i as f32).collect();
        let mut a = ChannelStats::new(3).unwrap().with_samples(50);
        a.observe(&rows, 3).unwrap();
        let mut b = ChannelStats::new(3).unwrap().with_samples(50);
        for c in rows.chunks(3 * 7) {
            b.observe(c, 3).unwrap();
        }
        assert_eq!(a.samples(), b.samples());
        let got = a.samples().unwrap();
        assert_eq!(got.len(), 150);
        // A uniform sample of rows 0..1000 reaches past the first 50 rows.
        assert!(got.chunks(3).filter(|r| r[0] >= 1500.0).count() > 10);
    }

    /// Ledoit–Wolf dampening: rows of an anisotropic distribution shrink fully when they are few
    /// against K and hardly when they are many (isotropic rows shrink fully at any count: the
    /// target is then the truth); rows with one outer product (`x_i x_iᵀ` all equal)
    /// never shrink.
    #[test]
    fn shrinkage_damp_falls_with_more_rows() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut normal = || {
            // Sum of 12 uniforms minus 6: close enough to N(0, 1) for this test.
            (0..12)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 11) as f64 / (1u64 << 53) as f64
                })
                .sum::<f64>() as f32
                - 6.0
        };
        let k = 32;
        let damp = |rows: usize, normal: &mut dyn FnMut() -> f32| {
            let mut s = ChannelStats::new(k).unwrap().with_hessian();
            // Channel j has standard deviation 1 + j: far from isotropic, so the shrinkage
            // target μ·I is wrong and only sampling noise justifies shrinking towards it.
            let x: Vec<f32> = (0..rows * k).map(|i| normal() * (1 + i % k) as f32).collect();
            s.observe(&x, k).unwrap();
            s.shrinkage_damp().unwrap()
        };
        let (few, many) = (damp(16, &mut normal), damp(20_000, &mut normal));
        assert!(few > 1.0, "16 rows of 32 channels: damp {few}");
        assert!(many < 0.01, "20000 rows: damp {many}");
        let mut axis = ChannelStats::new(2).unwrap().with_hessian();
        axis.observe(&[1.0, 0.0, -1.0, 0.0, 1.0, 0.0], 2).unwrap();
        assert_eq!(axis.shrinkage_damp(), Some(0.0));
        assert_eq!(ChannelStats::new(2).unwrap().shrinkage_damp(), None);
    }
}
