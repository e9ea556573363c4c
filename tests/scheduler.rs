//! The in-flight batching scheduler without a GPU: a fake model whose next token depends only on
//! a sequence's own history must give every request the same tokens whatever else runs beside
//! it, and every page must come back.

use qfuse::runtime::scheduler::{Completion, Finish, Geometry, Request, SamplingParams, Scheduler, StepInput};

const GEO: Geometry = Geometry { page_size: 16, max_pages: 8, max_seq: 128, max_batch: 8, max_step_tokens: 32 };

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB)
}

/// The fake model: the next token of a row is a hash of its last fed token and its position, so
/// a wrong cache length, a wrong token fed or rows swapped show up in the output.
fn fake_model(input: &StepInput, vocab: u64) -> Vec<u32> {
    assert_eq!(input.ids.len(), input.batch * input.seq);
    assert_eq!(input.page_table.len(), input.batch * GEO.max_pages as usize);
    assert!(input.batch <= GEO.max_batch as usize && input.seq <= GEO.max_step_tokens as usize);
    (0..input.batch)
        .map(|b| {
            let last = input.ids[b * input.seq + input.seq - 1] as u64;
            let pos = input.cache_len[b] as u64 + input.seq as u64 - 1;
            assert!(pos < u64::from(GEO.max_seq), "position {pos} past the context");
            // Every position written must lie in a page the row owns.
            let pages = (pos / u64::from(GEO.page_size)) as usize;
            assert!((0..=pages).all(|c| input.page_table[b * GEO.max_pages as usize + c] >= 0));
            (mix(last * 1_000_003 + pos) % vocab) as u32
        })
        .collect()
}

/// What one request alone generates under the fake model (the reference).
fn alone(req: &Request, vocab: u64) -> Completion {
    let mut tokens = Vec::new();
    let (mut last, mut pos) = (*req.prompt.last().unwrap() as u64, req.prompt.len() as u64 - 1);
    loop {
        let t = (mix(last * 1_000_003 + pos) % vocab) as u32;
        tokens.push(t);
        let finish = if req.stop.contains(&t) {
            Some(Finish::Stop)
        } else if tokens.len() as u32 >= req.max_new {
            Some(Finish::Length)
        } else if pos + 1 >= u64::from(GEO.max_seq) {
            Some(Finish::Context)
        } else {
            None
        };
        if let Some(finish) = finish {
            return Completion { id: req.id, tokens, finish };
        }
        last = t as u64;
        pos += 1;
    }
}

fn requests(n: u64, vocab: u64) -> Vec<Request> {
    (0..n)
        .map(|id| {
            let h = mix(id);
            let len = 1 + (h % 100) as usize;
            Request {
                id,
                prompt: (0..len).map(|i| (mix(h + i as u64) % vocab) as u32).collect(),
                max_new: 1 + (h >> 8) as u32 % 60,
                stop: vec![(h >> 20) as u32 % vocab as u32],
                sampling: SamplingParams::default(),
            }
        })
        .collect()
}

#[test]
fn thousands_of_requests_finish_identically_and_free_every_page() {
    let vocab = 50;
    let mut sched = Scheduler::new(GEO, 40);
    let reqs = requests(3000, vocab);
    let mut done = Vec::new();
    let mut it = reqs.iter();
    let mut steps = 0;
    let mut max_running = 0;
    loop {
        // Requests arrive while others run: a few per step.
        for r in it.by_ref().take(3) {
            sched.submit(r.clone()).unwrap();
        }
        let out = sched.step(|inp| Ok::<_, ()>(fake_model(inp, vocab))).unwrap();
        max_running = max_running.max(sched.running());
        done.extend(out.finished);
        steps += 1;
        if sched.pending() == 0 && it.len() == 0 {
            break;
        }
        assert!(steps < 1_000_000, "no progress");
    }
    assert_eq!(sched.pages_in_use(), 0, "every page returns");
    assert!(max_running > 1, "requests were batched");
    assert_eq!(done.len(), reqs.len());
    done.sort_by_key(|c| c.id);
    for (c, r) in done.iter().zip(&reqs) {
        assert_eq!(*c, alone(r, vocab), "request {} differs when batched", r.id);
    }
    assert!(done.iter().any(|c| c.finish == Finish::Stop) && done.iter().any(|c| c.finish == Finish::Length));
}

#[test]
fn requests_wait_for_pages_instead_of_failing() {
    let vocab = 50;
    // 4 pages = 64 tokens: one long request at a time.
    let mut sched = Scheduler::new(GEO, 4);
    let long = |id| Request { id, prompt: vec![1; 30], max_new: 30, stop: vec![], sampling: SamplingParams::default() };
    for id in 0..5 {
        sched.submit(long(id)).unwrap();
    }
    let mut done = 0;
    while sched.pending() > 0 {
        let out = sched.step(|inp| Ok::<_, ()>(fake_model(inp, vocab))).unwrap();
        assert!(sched.running() <= 1, "only one request fits the cache");
        done += out.finished.len();
    }
    assert_eq!((done, sched.pages_in_use()), (5, 0));
}

#[test]
fn impossible_requests_are_refused_by_name() {
    let mut sched = Scheduler::new(GEO, 4);
    let e = sched.submit(Request { id: 7, prompt: vec![], max_new: 1, stop: vec![], sampling: SamplingParams::default() }).unwrap_err();
    assert!(e.contains("request 7") && e.contains("empty"), "{e}");
    let e =
        sched.submit(Request { id: 8, prompt: vec![1; 200], max_new: 1, stop: vec![], sampling: SamplingParams::default() }).unwrap_err();
    assert!(e.contains("200 tokens") && e.contains("128"), "{e}");
    let e =
        sched.submit(Request { id: 9, prompt: vec![1; 100], max_new: 20, stop: vec![], sampling: SamplingParams::default() }).unwrap_err();
    assert!(e.contains("pages"), "{e}");
}

#[test]
fn a_step_error_leaves_the_scheduler_consistent() {
    let mut sched = Scheduler::new(GEO, 8);
    sched.submit(Request { id: 1, prompt: vec![3; 5], max_new: 4, stop: vec![], sampling: SamplingParams::default() }).unwrap();
    assert!(sched.step(|_| Err::<Vec<u32>, _>("device lost")).is_err());
    // The failed step changed nothing: the request runs to completion afterwards.
    let mut out = vec![];
    while sched.pending() > 0 {
        out.extend(sched.step(|inp| Ok::<_, ()>(fake_model(inp, 50))).unwrap().finished);
    }
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].tokens.len(), 4);
}
