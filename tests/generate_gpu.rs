//! The GPU generator under load (issue 13, runtime): one shared [`Engine`], sixteen threads each
//! generating on their own [`Generator`] give exactly what one thread gives alone, and thousands of
//! requests through a cache too small to hold them at once all finish and return every page.
//! Needs an sm_90 GPU, so ignored by default (CI has none):
//!
//! ```text
//! cargo test --release --test generate_gpu -- --ignored --test-threads=1
//! ```
//!
//! The decoder is `$QFUSE_PDL_MODEL` or the default GGUF ([`common::gpu_test_decoder`]).

mod common;

use qfuse::runtime::scheduler::{Completion, Finish, Request, SamplingParams};
use qfuse::runtime::{Engine, Generator};

/// Request `id`: a prompt of 3 to 60 pseudo-random ids below 20,000, `max_new` new tokens,
/// greedy or (odd ids) sampled with a seed of its own.
fn request(id: u64, max_new: u32) -> Request {
    let len = 3 + (id as usize * 37) % 58;
    let prompt = (0..len).map(|i| ((id as usize * 7919 + i * 131 + 17) % 20_000) as u32).collect();
    let sampling = if id % 2 == 0 {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    } else {
        SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, seed: 1000 + id }
    };
    Request { id, prompt, max_new, stop: vec![], sampling }
}

/// Every token and the logits behind it, of `req` generated alone on a fresh generator.
/// A request's tokens and the logits of each step.
type Generated = (Vec<u32>, Vec<Vec<f32>>);

fn generate_alone(engine: &Engine, req: &Request) -> Generated {
    let mut gen = Generator::new(engine, None).expect("generator");
    gen.keep_logits = true;
    gen.submit(req.clone()).expect("submit");
    let (mut tokens, mut logits) = (vec![], vec![]);
    while gen.pending() > 0 {
        let report = gen.step().expect("step");
        for &(id, t) in &report.emitted {
            assert_eq!(id, req.id);
            tokens.push(t);
            logits.push(gen.last_logits().iter().find(|(r, _)| *r == id).expect("logits kept").1.clone());
        }
    }
    assert_eq!(gen.pages_in_use(), 0, "request {}: pages back", req.id);
    (tokens, logits)
}

/// Sixteen threads share one engine, each generating two requests in turn on a generator of its
/// own: every request's tokens and logits are bit for bit those of the same request generated
/// alone on one thread (greedy and seeded sampling alike).
#[test]
#[ignore = "needs an NVIDIA GPU (sm_90) and NVRTC"]
fn sixteen_threads_generate_what_one_thread_generates() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::compile_decoder_plan(&common::gpu_test_decoder(), "fp16", 4, dir.path());
    let engine = Engine::load(&path).expect("load");
    let requests: Vec<Request> = (0..32).map(|id| request(id, 12)).collect();
    let alone: Vec<_> = requests.iter().map(|r| generate_alone(&engine, r)).collect();
    let threaded: Vec<Vec<(u64, Generated)>> = std::thread::scope(|s| {
        let handles: Vec<_> = requests
            .chunks(2)
            .map(|pair| {
                let engine = &engine;
                s.spawn(move || pair.iter().map(|r| (r.id, generate_alone(engine, r))).collect())
            })
            .collect();
        assert_eq!(handles.len(), 16);
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let mut checked = 0;
    for (id, (tokens, logits)) in threaded.into_iter().flatten() {
        let (ref_tokens, ref_logits) = &alone[id as usize];
        assert_eq!(&tokens, ref_tokens, "request {id}: tokens");
        assert_eq!(tokens.len(), 12, "request {id}: max_new tokens");
        for (step, (a, b)) in logits.iter().zip(ref_logits).enumerate() {
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "request {id}, token {step}: logits differ");
        }
        checked += 1;
    }
    assert_eq!(checked, requests.len());
    println!("16 threads, {checked} requests: identical to one thread, bit for bit");
}

/// 2,000 requests (prompts of 3 to 60 tokens, 1 to 8 new tokens) through one generator whose
/// cache holds 12 pages of 32 tokens, fewer than the plan's 4 sequences of 256 need: requests wait
/// for pages, each finishes with exactly its `max_new` tokens, and the page count returns to 0.
#[test]
#[ignore = "needs an NVIDIA GPU (sm_90) and NVRTC"]
fn thousands_of_requests_return_every_page() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::compile_decoder_plan(&common::gpu_test_decoder(), "fp16", 4, dir.path());
    let engine = Engine::load(&path).expect("load");
    let mut gen = Generator::new(&engine, Some(12)).expect("generator");
    let requests: Vec<Request> = (0..2000u64).map(|id| request(id, 1 + (id as u32 * 5) % 8)).collect();
    let (mut done, mut most_pages, mut pending) = (Vec::<Completion>::new(), 0, requests.iter());
    while gen.pending() > 0 || pending.len() > 0 {
        // Requests arrive a few at a time, while others are mid-generation.
        for r in pending.by_ref().take(3) {
            gen.submit(r.clone()).expect("submit");
        }
        done.extend(gen.step().expect("step").finished);
        most_pages = most_pages.max(gen.pages_in_use());
        assert!(gen.pages_in_use() <= 12, "more pages in use than the cache has");
    }
    assert_eq!(gen.pages_in_use(), 0, "every page returned");
    assert_eq!(done.len(), requests.len(), "every request finished");
    done.sort_by_key(|c| c.id);
    for (c, r) in done.iter().zip(&requests) {
        assert_eq!((c.id, c.finish, c.tokens.len()), (r.id, Finish::Length, r.max_new as usize), "request {}", r.id);
    }
    println!("2000 requests, at most {most_pages} of 12 pages in use, all returned");
}
