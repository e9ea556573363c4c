//! Group-wise integer quantization of a weight `[N, K]`: groups of `G` consecutive elements along
//! `K`, one scale (and, asymmetric, one zero point) per group.
//!
//! Round-to-nearest parameters for one group with values `v` and `b` bits:
//! - symmetric: codes in `[−2^(b−1), 2^(b−1)−1]`, `s = amax(v) / (2^(b−1)−1)`, no zero point;
//! - asymmetric: codes in `[0, 2^b−1]`, the range `[min(v), max(v)]` widened to include 0,
//!   `s = (max − min)/(2^b−1)`, `z = clamp(RNE(−min/s), 0, 2^b−1)`, so that 0 is exactly representable.
//!
//! A group that is all zeros (or whose scale underflows to 0 in `f32`) gets `s = 1`, `z = 0`: its
//! elements quantize to the code of 0 (or to values below the code resolution) and nothing is divided
//! by zero. The quantized code is `clamp(RNE(w/s) + z, qmin, qmax)`; dequantization `(q − z)·s`.

use super::clip::{mse_params, MseClip};
use super::{check_matrix, invalid, Result};
use crate::numerics::round_half_even;
use rayon::prelude::*;

/// Per-group quantization parameters of a `[n, k]` weight, without codes.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupParams {
    /// Bits per code: 2..=8 symmetric, 2..=7 asymmetric (asymmetric codes must fit an `i8`).
    pub bits: u32,
    /// Group size along `K` (≥ 1; `G ≥ K` is one group per row).
    pub group: usize,
    /// Rows (outputs).
    pub n: usize,
    /// Columns (inputs).
    pub k: usize,
    /// Symmetric (signed codes, no zero point) or asymmetric (unsigned codes and zero points).
    pub symmetric: bool,
    /// Dequantization multipliers `[n, ceil(k/group)]`, finite and positive.
    pub scales: Vec<f32>,
    /// Zero points `[n, ceil(k/group)]` in `[0, 2^bits − 1]`; present exactly when asymmetric.
    pub zeros: Option<Vec<u8>>,
}

/// A weight quantized group-wise: [`GroupParams`] plus one code per element.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupQuant {
    /// Bits per code (see [`GroupParams::bits`]).
    pub bits: u32,
    /// Group size along `K`.
    pub group: usize,
    /// Rows (outputs).
    pub n: usize,
    /// Columns (inputs).
    pub k: usize,
    /// Symmetric (signed codes) or asymmetric (unsigned codes with zero points).
    pub symmetric: bool,
    /// Codes `[n, k]` row-major; asymmetric codes are the values `0..2^bits` stored in an `i8`.
    pub codes: Vec<i8>,
    /// Multipliers `[n, ceil(k/group)]`.
    pub scales: Vec<f32>,
    /// Zero points `[n, ceil(k/group)]`, asymmetric only.
    pub zeros: Option<Vec<u8>>,
}

/// Checks the shape options shared by every constructor.
pub(super) fn check_format(bits: u32, group: usize, symmetric: bool) -> Result<()> {
    let max_bits = if symmetric { 8 } else { 7 };
    if !(2..=max_bits).contains(&bits) {
        let kind = if symmetric { "symmetric" } else { "asymmetric" };
        return invalid(format!("{kind} quantization supports 2..={max_bits} bits (codes are stored as i8), got {bits}"));
    }
    if group == 0 {
        return invalid("group size must be at least 1");
    }
    Ok(())
}

impl GroupParams {
    /// Validated parameters: `bits` and `group` in range, `scales` (and `zeros`, present exactly when
    /// asymmetric) of length `n · ceil(k/group)`, scales finite and positive, zero points in range.
    pub fn new(
        (bits, group, symmetric): (u32, usize, bool),
        (n, k): (usize, usize),
        scales: Vec<f32>,
        zeros: Option<Vec<u8>>,
    ) -> Result<Self> {
        check_format(bits, group, symmetric)?;
        if n == 0 || k == 0 {
            return invalid(format!("empty weight shape [{n}, {k}]"));
        }
        let p = GroupParams { bits, group, n, k, symmetric, scales, zeros };
        let want = n * p.groups();
        if p.scales.len() != want {
            return invalid(format!("{} scales for a [{n}, {k}] weight in groups of {group}: expected {want}", p.scales.len()));
        }
        if let Some(i) = p.scales.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
            return invalid(format!(
                "scale {i} (row {}, group {}) is {}: scales must be finite and positive",
                i / p.groups(),
                i % p.groups(),
                p.scales[i]
            ));
        }
        match (&p.zeros, symmetric) {
            (Some(_), true) => return invalid("symmetric quantization has no zero points"),
            (None, false) => return invalid("asymmetric quantization needs zero points"),
            (Some(z), false) if z.len() != want => return invalid(format!("{} zero points, expected {want}", z.len())),
            (Some(z), false) => {
                if let Some(i) = z.iter().position(|&v| f32::from(v) > p.qmax()) {
                    return invalid(format!("zero point {i} is {}, above the {bits}-bit code range", z[i]));
                }
            }
            (None, true) => {}
        }
        Ok(p)
    }

    /// Round-to-nearest parameters of `w [n, k]` (see the module doc).
    pub fn rtn(w: &[f32], (n, k): (usize, usize), bits: u32, group: usize, symmetric: bool) -> Result<Self> {
        Self::per_group(w, (n, k), (bits, group, symmetric), None)
    }

    /// Parameters of `w [n, k]` whose range per group is the round-to-nearest one shrunk by the
    /// clip ratio of `clip` with the least squared rounding error (see [`MseClip`]); no group's
    /// `Σ (w − ŵ)²` exceeds its plain RTN error. Errors as [`GroupParams::rtn`], and on a bad grid.
    pub fn mse(w: &[f32], (n, k): (usize, usize), bits: u32, group: usize, symmetric: bool, clip: &MseClip) -> Result<Self> {
        let ratios = clip.ratios()?;
        Self::per_group(w, (n, k), (bits, group, symmetric), Some(&ratios))
    }

    /// Parameters of every group of `w [n, k]`: RTN, or with `ratios` the least-squared-error clip.
    fn per_group(w: &[f32], (n, k): (usize, usize), (bits, group, symmetric): (u32, usize, bool), ratios: Option<&[f32]>) -> Result<Self> {
        check_format(bits, group, symmetric)?;
        check_matrix(w, n, k, "rtn: weight")?;
        let ng = k.div_ceil(group);
        let per_row: Vec<(f32, u8)> =
            w.par_chunks(k).flat_map_iter(|row| row.chunks(group).map(|g| params_of(g, bits, symmetric, ratios))).collect();
        debug_assert_eq!(per_row.len(), n * ng);
        let scales = per_row.iter().map(|p| p.0).collect();
        let zeros = (!symmetric).then(|| per_row.iter().map(|p| p.1).collect());
        Ok(GroupParams { bits, group, n, k, symmetric, scales, zeros })
    }

    /// Groups per row, `ceil(k/group)`.
    pub fn groups(&self) -> usize {
        self.k.div_ceil(self.group)
    }

    /// The code range `(qmin, qmax)`.
    pub fn qrange(&self) -> (f32, f32) {
        code_range(self.bits, self.symmetric)
    }

    fn qmax(&self) -> f32 {
        self.qrange().1
    }

    /// Scale and zero point of row `r`, column `c`.
    pub fn at(&self, r: usize, c: usize) -> (f32, f32) {
        let i = r * self.groups() + c / self.group;
        (self.scales[i], self.zeros.as_ref().map_or(0.0, |z| f32::from(z[i])))
    }
}

/// `(qmin, qmax)` of `bits`-bit codes.
pub(super) fn code_range(bits: u32, symmetric: bool) -> (f32, f32) {
    if symmetric {
        let h = (1u32 << (bits - 1)) as f32;
        (-h, h - 1.0)
    } else {
        (0.0, ((1u32 << bits) - 1) as f32)
    }
}

/// `(scale, zero point)` of one group of finite values: round-to-nearest ([`group_params`]), or with
/// `ratios` the clip ratio with the least squared rounding error ([`mse_params`]).
pub(super) fn params_of(v: &[f32], bits: u32, symmetric: bool, ratios: Option<&[f32]>) -> (f32, u8) {
    match ratios {
        Some(r) => {
            let (s, z, _) = mse_params(v, bits, symmetric, r);
            (s, z)
        }
        None => group_params(v, bits, symmetric),
    }
}

/// Round-to-nearest `(scale, zero point)` of one group of finite values (zero point 0 when symmetric).
pub(super) fn group_params(v: &[f32], bits: u32, symmetric: bool) -> (f32, u8) {
    let (_, qmax) = code_range(bits, symmetric);
    let (lo, hi) = v.iter().fold((0f32, 0f32), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    let s = if symmetric { lo.abs().max(hi) / qmax } else { (hi - lo) / qmax };
    if !(s > 0.0 && s.is_finite()) {
        return (1.0, 0);
    }
    let z = if symmetric { 0.0 } else { round_half_even(-lo / s).clamp(0.0, qmax) };
    (s, z as u8)
}

/// The code of `x` under scale `s` and zero point `z`: `clamp(RNE(x/s) + z, qmin, qmax)`.
#[inline]
pub(super) fn code(x: f32, s: f32, z: f32, (qmin, qmax): (f32, f32)) -> i8 {
    (round_half_even(x / s) + z).clamp(qmin, qmax) as i8
}

impl GroupQuant {
    /// Codes on given parameters; errors when the code count or a code's range is wrong.
    pub fn from_params(p: GroupParams, codes: Vec<i8>) -> Result<Self> {
        if codes.len() != p.n * p.k {
            return invalid(format!("{} codes for a [{}, {}] weight", codes.len(), p.n, p.k));
        }
        let (qmin, qmax) = p.qrange();
        if let Some(i) = codes.iter().position(|&c| f32::from(c) < qmin || f32::from(c) > qmax) {
            return invalid(format!("code [{}, {}] = {} is outside [{qmin}, {qmax}]", i / p.k, i % p.k, codes[i]));
        }
        let GroupParams { bits, group, n, k, symmetric, scales, zeros } = p;
        Ok(GroupQuant { bits, group, n, k, symmetric, codes, scales, zeros })
    }

    /// The parameters without the codes.
    pub fn params(&self) -> GroupParams {
        let GroupQuant { bits, group, n, k, symmetric, ref scales, ref zeros, .. } = *self;
        GroupParams { bits, group, n, k, symmetric, scales: scales.clone(), zeros: zeros.clone() }
    }

    /// Groups per row, `ceil(k/group)`.
    pub fn groups(&self) -> usize {
        self.k.div_ceil(self.group)
    }

    /// `ŵ = (q − z)·s` for every element, `[n, k]` row-major, in `f32`.
    pub fn dequantize(&self) -> Vec<f32> {
        let ng = self.groups();
        let mut out = vec![0f32; self.n * self.k];
        out.par_chunks_mut(self.k).zip(self.codes.par_chunks(self.k)).enumerate().for_each(|(r, (dst, q))| {
            for (c, (d, &q)) in dst.iter_mut().zip(q).enumerate() {
                let i = r * ng + c / self.group;
                let z = self.zeros.as_ref().map_or(0.0, |z| f32::from(z[i]));
                *d = (f32::from(q) - z) * self.scales[i];
            }
        });
        out
    }
}

/// Round-to-nearest group quantization of `w [n, k]` (see the module doc).
pub fn rtn(w: &[f32], n: usize, k: usize, bits: u32, group: usize, symmetric: bool) -> Result<GroupQuant> {
    let p = GroupParams::rtn(w, (n, k), bits, group, symmetric)?;
    quantize_with(w, p)
}

/// Group quantization of `w [n, k]` on [`GroupParams::mse`]'s clipped parameters.
pub fn mse_rtn(w: &[f32], (n, k): (usize, usize), bits: u32, group: usize, symmetric: bool, clip: &MseClip) -> Result<GroupQuant> {
    let p = GroupParams::mse(w, (n, k), bits, group, symmetric, clip)?;
    quantize_with(w, p)
}

/// Codes of `w` (shape `[p.n, p.k]`, finite) on the given parameters:
/// `q = clamp(RNE(w/s) + z, qmin, qmax)`.
pub fn quantize_with(w: &[f32], p: GroupParams) -> Result<GroupQuant> {
    check_matrix(w, p.n, p.k, "quantize_with: weight")?;
    let range = p.qrange();
    let mut codes = vec![0i8; w.len()];
    codes.par_chunks_mut(p.k).zip(w.par_chunks(p.k)).enumerate().for_each(|(r, (q, row))| {
        for (c, (q, &x)) in q.iter_mut().zip(row).enumerate() {
            let (s, z) = p.at(r, c);
            *q = code(x, s, z, range);
        }
    });
    let GroupParams { bits, group, n, k, symmetric, scales, zeros } = p;
    Ok(GroupQuant { bits, group, n, k, symmetric, codes, scales, zeros })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asymmetric_group_maps_zero_exactly_and_covers_the_range() {
        let w = [-1.0, 0.5, 2.0, 3.0];
        let q = rtn(&w, 1, 4, 4, 4, false).unwrap();
        let s = q.scales[0];
        assert_eq!(s, 4.0 / 15.0);
        let z = q.zeros.as_ref().unwrap()[0];
        assert_eq!(z, 4); // RNE(1/(4/15)) = RNE(3.75)
        let d = q.dequantize();
        for (a, b) in w.iter().zip(&d) {
            assert!((a - b).abs() <= s / 2.0 + 1e-6, "{a} → {b}");
        }
        let zero = quantize_with(&[0.0, 0.0, 0.0, 0.0], q.params()).unwrap();
        assert!(zero.dequantize().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn all_zero_group_gets_unit_scale() {
        let q = rtn(&[0.0; 6], 2, 3, 4, 2, false).unwrap();
        assert_eq!(q.scales, vec![1.0; 4]);
        assert_eq!(q.zeros, Some(vec![0; 4]));
        assert_eq!(q.dequantize(), vec![0.0; 6]);
        let s = rtn(&[0.0; 6], 2, 3, 4, 2, true).unwrap();
        assert_eq!(s.scales, vec![1.0; 4]);
    }

    #[test]
    fn symmetric_codes_use_the_signed_range() {
        let q = rtn(&[-7.0, 7.0, 3.5, -100.0], 1, 4, 4, 2, true).unwrap();
        assert_eq!(q.scales, vec![1.0, 100.0 / 7.0]);
        assert_eq!(q.codes, vec![-7, 7, 0, -7]);
    }

    /// Clipped parameters never raise a group's squared error above RTN's, lower the total of 3- and
    /// 4-bit groups on weights with outliers (at 8 bits the rounding noise a shrink saves rarely pays
    /// for clipping an outlier), and reproduce RTN when the grid holds only the unit ratio.
    #[test]
    fn mse_groups_never_lose_to_rtn() {
        let (n, k) = (6, 40);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 29) as f32 - 14.0) / 9.0 + if i % 17 == 0 { 6.0 } else { 0.0 }).collect();
        let sq = |q: &GroupQuant| -> Vec<f64> {
            let d = q.dequantize();
            let e: Vec<f64> = w.iter().zip(&d).map(|(a, b)| f64::from(a - b).powi(2)).collect();
            e.chunks(q.group).map(|g| g.iter().sum()).collect()
        };
        for (bits, group, sym) in [(4, 8, false), (4, 8, true), (8, 40, true), (3, 8, false)] {
            let plain = rtn(&w, n, k, bits, group, sym).unwrap();
            let clipped = mse_rtn(&w, (n, k), bits, group, sym, &MseClip::default()).unwrap();
            let (a, b) = (sq(&clipped), sq(&plain));
            assert!(a.iter().zip(&b).all(|(x, y)| x <= y), "{bits} bits g{group}: a group got worse");
            if bits < 8 {
                assert!(a.iter().sum::<f64>() < b.iter().sum::<f64>(), "{bits} bits g{group}: nothing clipped");
            }
            let unit = MseClip { grid: 1, max_shrink: 0.5 };
            assert_eq!(mse_rtn(&w, (n, k), bits, group, sym, &unit).unwrap(), plain);
        }
        assert!(mse_rtn(&w, (n, k), 4, 8, false, &MseClip { grid: 4, max_shrink: -0.1 }).is_err());
        assert!(mse_rtn(&[f32::INFINITY; 4], (1, 4), 4, 2, false, &MseClip::default()).is_err());
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(rtn(&[1.0, f32::NAN], 1, 2, 4, 2, false).unwrap_err().to_string().contains("[0, 1]"));
        assert!(rtn(&[1.0; 3], 1, 2, 4, 2, false).is_err());
        assert!(rtn(&[1.0; 2], 1, 2, 8, 2, false).unwrap_err().to_string().contains("2..=7"));
        assert!(rtn(&[1.0; 2], 1, 2, 4, 0, true).is_err());
        assert!(GroupParams::new((4, 2, false), (1, 2), vec![1.0], Some(vec![16])).is_err());
        assert!(GroupParams::new((4, 2, true), (1, 2), vec![0.0], None).is_err());
        let p = GroupParams::new((4, 2, true), (1, 3), vec![1.0, 1.0], None).unwrap();
        assert!(GroupQuant::from_params(p.clone(), vec![0, 8, 0]).is_err());
        assert!(GroupQuant::from_params(p, vec![0, -8, 7]).is_ok());
    }
}
