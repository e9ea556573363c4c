//! Random prompts through the GPU alone ([`super::super::inputs::decoder_prompts`]: random
//! lengths, ids from the vocabulary and its special tokens), each prefilled and then generated
//! greedily for [`RANDOM_NEW_TOKENS`] tokens in shared decode batches; every logit of every
//! emitted row must be finite.

use serde::Serialize;

use super::{lockstep, Feed, StepModel};
use crate::runtime::scheduler::{Geometry, Request, SamplingParams};

/// Tokens generated per random prompt.
pub const RANDOM_NEW_TOKENS: u32 = 4;

/// The longest random prompt for a plan of `max_seq` tokens: half the context, at most 256, and
/// short enough for [`RANDOM_NEW_TOKENS`] more.
pub fn max_prompt_len(max_seq: u64) -> u64 {
    (max_seq / 2).min(256).min(max_seq.saturating_sub(u64::from(RANDOM_NEW_TOKENS) + 1)).max(1)
}

/// What the random prompts found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RandomReport {
    /// Prompts run.
    pub prompts: usize,
    /// Their longest, in tokens.
    pub longest: usize,
    /// Rows checked (one per generated token).
    pub rows: usize,
    /// Rows with a non-finite logit.
    pub non_finite: usize,
    /// The first such row, described (prompt, step, element, value).
    pub first: Option<String>,
}

impl RandomReport {
    /// Passes when every logit was finite.
    pub fn passed(&self) -> bool {
        self.non_finite == 0
    }
}

/// Runs `prompts` on `gpu` alone, [`RANDOM_NEW_TOKENS`] greedy tokens each, and checks every
/// emitted row's logits.
pub fn check_random(geometry: Geometry, gpu: &mut dyn StepModel, prompts: &[Vec<u32>]) -> anyhow::Result<RandomReport> {
    let requests = prompts
        .iter()
        .enumerate()
        .map(|(id, p)| Request {
            id: id as u64,
            prompt: p.clone(),
            max_new: RANDOM_NEW_TOKENS,
            stop: vec![],
            sampling: SamplingParams::default(),
        })
        .collect();
    let mut r = RandomReport { prompts: prompts.len(), longest: prompts.iter().map(Vec::len).max().unwrap_or(0), ..Default::default() };
    lockstep(geometry, requests, &mut [gpu], &Feed::First, &mut |row| {
        r.rows += 1;
        if let Some((i, x)) = row.logits[0].iter().enumerate().find(|(_, x)| !x.is_finite()) {
            r.non_finite += 1;
            let len = prompts[row.request as usize].len();
            r.first.get_or_insert(format!("prompt {} ({len} tokens), step {}: logit {i} is {x}", row.request, row.index));
        }
        Ok(())
    })?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::scheduler::StepInput;

    /// Logits `[0, 1, …]`, except NaN in the row of a step whose cache reaches `poison_at`.
    struct Fake {
        poison_at: i64,
    }

    impl StepModel for Fake {
        fn step(&mut self, input: &StepInput) -> anyhow::Result<(Vec<u32>, Vec<Vec<f32>>)> {
            let rows: Vec<Vec<f32>> = input
                .cache_len
                .iter()
                .map(|&c| {
                    let mut row: Vec<f32> = (0..5).map(|v| v as f32).collect();
                    if c + input.seq as i64 == self.poison_at {
                        row[3] = f32::NAN;
                    }
                    row
                })
                .collect();
            Ok((vec![4; input.batch], rows))
        }
    }

    const GEO: Geometry = Geometry { page_size: 8, max_pages: 8, max_seq: 64, max_batch: 4, max_step_tokens: 16 };

    #[test]
    fn a_non_finite_logit_is_reported_by_prompt_and_step() {
        let prompts: Vec<Vec<u32>> = vec![vec![1; 3], vec![2; 20], vec![0; 1]];
        let clean = check_random(GEO, &mut Fake { poison_at: 1000 }, &prompts).unwrap();
        assert_eq!((clean.rows, clean.non_finite, clean.longest), (3 * RANDOM_NEW_TOKENS as usize, 0, 20));
        assert!(clean.passed());
        // Sequence length 22 = prompt 2's 20 tokens + its third token fed: its step 2.
        let bad = check_random(GEO, &mut Fake { poison_at: 22 }, &prompts).unwrap();
        assert_eq!(bad.non_finite, 1);
        assert_eq!(bad.first.as_deref(), Some("prompt 1 (20 tokens), step 2: logit 3 is NaN"));
        assert!(!bad.passed());
    }

    #[test]
    fn prompts_fit_the_context_with_their_new_tokens() {
        assert_eq!(max_prompt_len(1024), 256);
        assert_eq!(max_prompt_len(64), 32);
        assert_eq!(max_prompt_len(8), 3);
        assert_eq!(max_prompt_len(2), 1);
        for s in 6..600 {
            assert!(max_prompt_len(s) + u64::from(RANDOM_NEW_TOKENS) < s, "max_seq {s}");
        }
    }
}
