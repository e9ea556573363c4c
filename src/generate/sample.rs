//! Next-token choice: greedy, or temperature / top-k / top-p sampling driven by a counter-based
//! generator, so that a seed and a step number always give the same draw.

/// The most tokens a sampling step considers: `top_k` is capped at this, and `top_k = 0` means
/// this many. The GPU sampler (`templates/sample.cu`) selects and sorts at most this many
/// candidates in shared memory; the CPU applies the same cap so both follow one rule. Tokens past
/// the 256 most likely carry negligible mass for any temperature a chat uses.
pub const MAX_TOP_K: usize = 256;

/// Sampling settings (one definition for the interpreter and the GPU runtime).
pub use crate::runtime::scheduler::SamplingParams as Sampling;

/// SplitMix64's finaliser: a bijective hash of a 64-bit counter.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform draw in [0, 1) for (`seed`, `counter`).
pub fn uniform(seed: u64, counter: u64) -> f64 {
    (mix(mix(seed) ^ counter) >> 11) as f64 / (1u64 << 53) as f64
}

/// The index of the largest logit (the first one on ties); `None` for an empty or all-NaN row.
pub fn argmax(logits: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in logits.iter().enumerate() {
        if !x.is_nan() && best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i)
}

/// The number of most likely tokens sampling keeps before `top_p`: `top_k`, or [`MAX_TOP_K`] when
/// it is 0 or larger.
pub fn candidates(top_k: usize) -> usize {
    if top_k == 0 {
        MAX_TOP_K
    } else {
        top_k.min(MAX_TOP_K)
    }
}

/// Picks the next token from `logits` at generation step `step` (the generator's counter).
///
/// Greedy (`temperature == 0`): [`argmax`]. Otherwise: the non-NaN logits in descending
/// `total_cmp` order (ties: smaller index first), cut to [`candidates`]`(top_k)`; weights
/// `exp((l − l_max) / T)` in f64; the shortest prefix whose running sum of `w / Σw` reaches
/// `top_p`; `u = uniform(seed, step)`; the first kept token whose weight exceeds what is left of
/// `u · Σkept` after the weights before it (the last kept token if rounding leaves none).
/// `templates/sample.cu` performs exactly these operations (docs/codegen.md, "Sampling").
pub fn choose(logits: &[f32], s: &Sampling, step: u64) -> Option<usize> {
    if s.temperature == 0.0 {
        return argmax(logits);
    }
    let mut order: Vec<usize> = (0..logits.len()).filter(|&i| !logits[i].is_nan()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    order.truncate(candidates(s.top_k as usize));
    let top = *logits.get(*order.first()?)? as f64;
    let weights: Vec<f64> = order.iter().map(|&i| ((logits[i] as f64 - top) / s.temperature as f64).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut kept = 0;
    let mut mass = 0.0;
    for w in &weights {
        mass += w / total;
        kept += 1;
        if mass >= s.top_p as f64 {
            break;
        }
    }
    let kept_total: f64 = weights[..kept].iter().sum();
    let mut target = uniform(s.seed, step) * kept_total;
    for (i, w) in weights[..kept].iter().enumerate() {
        if target < *w {
            return Some(order[i]);
        }
        target -= w;
    }
    Some(order[kept - 1])
}
