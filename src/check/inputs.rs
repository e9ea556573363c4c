//! Random model inputs that respect the model: token ids drawn from the model's own vocabulary
//! (never beyond its embedding table or its tokenizer), token types from its type table, and
//! rows of different lengths padded the way the tokenizer pads them (id 0, mask 0). Decoder
//! prompts ([`decoder_prompts`]) also draw the special tokens (BOS, EOS, chat markers) often.

use crate::plan::PlanMeta;
use crate::runtime::HostTensor;

/// Weight-name fragments of the token embedding table (BERT, GGUF, Llama-family decoders).
const TOKEN_TABLES: [&str; 3] = ["word_embeddings", "token_embd", "embed_tokens"];
/// Weight-name fragment of BERT's token-type table.
const TYPE_TABLE: &str = "token_type_embeddings";

/// The ids a model accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputSpace {
    /// Token ids are `0..vocab`.
    pub vocab: u64,
    /// Token-type ids are `0..type_vocab`.
    pub type_vocab: u64,
}

impl InputSpace {
    /// The space of the plan's model: the vocabulary is the smaller of the token embedding
    /// table's rows (the config's `vocab_size`) and `tokenizer_vocab` (the tokenizer's size, with
    /// its added special tokens), whichever are known; an error if neither is.
    pub fn of_plan(meta: &PlanMeta, tokenizer_vocab: Option<u64>) -> Result<Self, String> {
        let rows =
            |fragment: &str| meta.weights.iter().filter(|w| w.name.contains(fragment)).filter_map(|w| w.shape.first().copied()).min();
        let table = TOKEN_TABLES.iter().filter_map(|f| rows(f)).min();
        let vocab = match (table, tokenizer_vocab) {
            (Some(a), Some(b)) => a.min(b),
            (Some(v), None) | (None, Some(v)) => v,
            (None, None) => return Err("cannot tell the model's vocabulary: no token embedding weight and no tokenizer".into()),
        };
        if vocab == 0 {
            return Err("the model's vocabulary is empty".into());
        }
        Ok(InputSpace { vocab, type_vocab: rows(TYPE_TABLE).unwrap_or(1).max(1) })
    }
}

/// A batch of `lengths.len()` rows of `seq` tokens; row `r` has `lengths[r]` (at least 1, at most
/// `seq`) tokens then padding. Ids and types are drawn by `draw(n)` (uniform in `0..n`).
pub fn bert_batch(space: InputSpace, seq: u64, lengths: &[u64], draw: &mut dyn FnMut(u64) -> u64) -> Vec<(&'static str, HostTensor)> {
    let n = lengths.len() * seq as usize;
    let (mut ids, mut mask, mut types) = (vec![0i64; n], vec![0i64; n], vec![0i64; n]);
    for (row, &len) in lengths.iter().enumerate() {
        for t in 0..len.clamp(1, seq) as usize {
            let i = row * seq as usize + t;
            ids[i] = draw(space.vocab) as i64;
            mask[i] = 1;
            types[i] = draw(space.type_vocab) as i64;
        }
    }
    let shape = vec![lengths.len() as u64, seq];
    vec![
        ("input_ids", HostTensor::from_i64(shape.clone(), &ids)),
        ("attention_mask", HostTensor::from_i64(shape.clone(), &mask)),
        ("token_type_ids", HostTensor::from_i64(shape, &types)),
    ]
}

/// The ids a decoder's random prompts draw from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptSpace {
    /// Token ids are `0..vocab`.
    pub vocab: u64,
    /// The special ids among them (BOS, EOS, control tokens), sorted, without repeats.
    pub special: Vec<u32>,
}

impl PromptSpace {
    /// The space of a decoder plan: [`InputSpace::of_plan`]'s vocabulary, also at most the
    /// logits' width, and the `special` ids that lie in it.
    pub fn of_decoder(meta: &PlanMeta, tokenizer_vocab: u64, special: &[u32]) -> Result<Self, String> {
        let mut vocab = InputSpace::of_plan(meta, Some(tokenizer_vocab))?.vocab;
        if let Some(d) = &meta.decoder {
            vocab = vocab.min(d.vocab);
        }
        let mut special: Vec<u32> = special.iter().copied().filter(|&id| u64::from(id) < vocab).collect();
        special.sort_unstable();
        special.dedup();
        Ok(Self { vocab, special })
    }
}

/// Share of a random prompt's ids drawn from the special tokens (when the model has any): one in
/// eight, far more than their share of the vocabulary.
pub const SPECIAL_ONE_IN: u64 = 8;

/// `n` prompts of 1 to `max_len` tokens (uniform); each id is one of the special tokens with
/// probability 1/[`SPECIAL_ONE_IN`], else uniform in the vocabulary. `draw(n)` is uniform in `0..n`.
pub fn decoder_prompts(space: &PromptSpace, n: usize, max_len: u64, draw: &mut dyn FnMut(u64) -> u64) -> Vec<Vec<u32>> {
    let id = |draw: &mut dyn FnMut(u64) -> u64| {
        if !space.special.is_empty() && draw(SPECIAL_ONE_IN) == 0 {
            space.special[draw(space.special.len() as u64) as usize]
        } else {
            draw(space.vocab) as u32
        }
    };
    (0..n)
        .map(|_| {
            let len = 1 + draw(max_len.max(1));
            (0..len).map(|_| id(draw)).collect()
        })
        .collect()
}

/// Keeps the inputs the plan binds (a model without token types has no `token_type_ids`).
pub fn bound_by(meta: &PlanMeta, inputs: Vec<(&'static str, HostTensor)>) -> Vec<(&'static str, HostTensor)> {
    inputs.into_iter().filter(|(name, _)| meta.inputs.iter().any(|i| i.name == *name)).collect()
}

/// A small deterministic generator (SplitMix64) for reproducible random inputs.
pub struct SplitMix(u64);

impl SplitMix {
    /// The generator of `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `[lo, hi)` on a grid of 2²⁴ steps.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }

    /// Uniform in `[-1, 1)`.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::WeightMeta;

    fn meta_with(weights: &[(&str, u64)]) -> PlanMeta {
        let weights = weights
            .iter()
            .map(|&(name, rows)| WeightMeta { name: name.into(), dtype: "f16".into(), shape: vec![rows, 8], section: 0 })
            .collect();
        PlanMeta { weights, ..Default::default() }
    }

    #[test]
    fn the_vocabulary_is_the_smaller_of_table_and_tokenizer() {
        let meta = meta_with(&[("embeddings.word_embeddings.weight.f16", 1000), ("embeddings.token_type_embeddings.weight", 1)]);
        assert_eq!(InputSpace::of_plan(&meta, None), Ok(InputSpace { vocab: 1000, type_vocab: 1 }));
        assert_eq!(InputSpace::of_plan(&meta, Some(900)).unwrap().vocab, 900);
        assert_eq!(InputSpace::of_plan(&meta_with(&[]), Some(77)).unwrap().vocab, 77);
        assert!(InputSpace::of_plan(&meta_with(&[]), None).is_err());
    }

    #[test]
    fn decoder_prompts_stay_in_their_ranges_and_draw_special_tokens() {
        let mut meta = meta_with(&[("model.embed_tokens.weight", 1000)]);
        meta.decoder = Some(crate::plan::DecoderMeta { vocab: 900, ..Default::default() });
        let space = PromptSpace::of_decoder(&meta, 950, &[2, 1, 2, 0, 990]).unwrap();
        assert_eq!(space, PromptSpace { vocab: 900, special: vec![0, 1, 2] }, "logits' width, special ids inside it");
        let mut rng = SplitMix::new(7);
        let prompts = decoder_prompts(&space, 400, 30, &mut |n| rng.below(n));
        assert_eq!(prompts.len(), 400);
        let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
        assert_eq!((lens.iter().min(), lens.iter().max()), (Some(&1), Some(&30)), "lengths 1..=30, both ends reached");
        let ids: Vec<u32> = prompts.into_iter().flatten().collect();
        assert!(ids.iter().all(|&id| id < 900));
        let special = ids.iter().filter(|&&id| id <= 2).count() as f64 / ids.len() as f64;
        assert!((0.08..0.18).contains(&special), "about 1/8 special: {special}");
        assert!(ids.iter().any(|&id| id > 800), "the whole vocabulary is drawn");
        let plain = PromptSpace { vocab: 5, special: vec![] };
        assert!(decoder_prompts(&plain, 50, 4, &mut |n| rng.below(n)).iter().flatten().all(|&id| id < 5));
    }

    #[test]
    fn ids_stay_in_the_vocabulary_and_rows_are_padded() {
        let space = InputSpace { vocab: 50, type_vocab: 2 };
        let mut state = 1u64;
        let mut draw = |n: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        let batch = bert_batch(space, 6, &[6, 2, 1], &mut draw);
        let ids = batch[0].1.to_f32_vec().unwrap();
        let mask = batch[1].1.to_f32_vec().unwrap();
        assert!(ids.iter().all(|&id| (0.0..50.0).contains(&id)));
        assert_eq!(mask, [1., 1., 1., 1., 1., 1., 1., 1., 0., 0., 0., 0., 1., 0., 0., 0., 0., 0.]);
        assert!(ids.iter().zip(&mask).all(|(&id, &m)| m == 1.0 || id == 0.0), "padding has id 0");
    }
}
