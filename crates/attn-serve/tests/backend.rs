//! The server's back end (the decoder engine, batched, with its caches) gives the
//! library's whole-sequence logits (what `engine_parity` checks against transformers)
//! for prompts, ragged prompt batches and decode steps, for GPT-2 and Llama.

mod common;

use attn::checkpoint::load_decoder;
use attn::generate::full_logits;
use attn::models::CausalLm;
use attn_serve::backend::Backend;

/// The backend's prefill, batched prefill and decode steps for three ragged sequences
/// against whole-sequence logits from a fresh pass of the library; then its attention
/// maps' shape.
fn backend_matches(
    backend: &Backend,
    reference: &dyn CausalLm,
    prompts: &[Vec<u32>],
    tail: &[u32],
) {
    let mut seqs: Vec<Vec<u32>> = prompts.to_vec();
    let mut caches = Vec::new();
    let close = |a: &[f32], b: &[f32], what: &str| {
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-4, "{what}: max difference {d}");
    };
    let last = |s: &[u32]| -> Vec<f32> {
        let want = full_logits(reference, s).unwrap();
        let v = want.len() / s.len();
        want[(s.len() - 1) * v..].to_vec()
    };
    for s in &seqs {
        let (cache, logits) = backend.prefill(s).unwrap();
        close(&logits, &last(s), "prefill");
        caches.push(cache);
    }
    // The three prompts in one ragged pass: same logits, and caches that the decode
    // steps below continue (the second half of the rows).
    let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    for ((cache, logits), s) in backend.prefill_many(&refs).unwrap().into_iter().zip(&seqs) {
        close(&logits, &last(s), "batched prefill");
        assert_eq!(cache.len(), s.len());
        caches.push(cache);
    }
    seqs.extend(seqs.clone());
    for &id in tail {
        let mut rows: Vec<_> = caches.iter_mut().map(|c| (c, id)).collect();
        let got = backend.step(&mut rows).unwrap();
        for (s, g) in seqs.iter_mut().zip(&got) {
            s.push(id);
            close(g, &last(s), "step");
        }
    }
    // Attention maps: one [H, T, T] per layer.
    let maps = backend.attention(&seqs[1]).unwrap();
    assert_eq!(maps.len(), reference.n_layer());
    assert!(maps[0].iter().all(|h| h.len() == seqs[1].len()));
}

#[test]
fn ragged_batch_steps_match_the_library_forward_pass() {
    let dir = common::tiny_model("backend");
    let (reference, tok) = load_decoder(&dir).unwrap();
    let backend = Backend::new(load_decoder(&dir).unwrap().0, true);
    assert!(backend.is_batched());
    // Three sequences of different lengths, each continued by the same five tokens.
    let prompts: Vec<Vec<u32>> = ["R", "ROMEO: But", "JULIET: O Romeo, Romeo!"]
        .iter()
        .map(|p| tok.encode(p).unwrap())
        .collect();
    let tail = tok.encode("light").unwrap();
    backend_matches(&backend, &reference, &prompts, &tail);
}

#[test]
fn llama_qwen2_and_mistral_are_served_with_batched_decode() {
    // transformers' fixtures: grouped key/value heads and rotary positions (llama-gqa);
    // q/k/v biases and a window of 5 in the second layer (qwen2-window); a window of 4
    // in every layer (mistral-window), which the longer prompts and decodes pass.
    for (name, vocab) in [
        ("llama-gqa", 103u32),
        ("qwen2-window", 71),
        ("mistral-window", 73),
    ] {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../attn/tests/fixtures/hf")
            .join(name);
        let reference = attn::engine::Decoder::load(&dir, None).unwrap();
        for batched in [true, false] {
            let backend = Backend::new(attn::engine::Decoder::load(&dir, None).unwrap(), batched);
            let prompts = vec![
                vec![5u32],
                vec![9, 8, 7, 6],
                vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
            ];
            backend_matches(&backend, &reference, &prompts, &[3, 50, vocab - 1]);
        }
    }
}

/// A request whose time runs out while it waits in the queue ends with the timeout
/// error and never reaches the model; the request queued beside it runs normally.
#[test]
fn a_request_that_times_out_while_queued_never_runs() {
    use attn::generate::SamplingConfig;
    use attn_serve::engine::{run, EngineModel, Event, GenJob, Job};
    use attn_serve::metrics::Metrics;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let dir = common::tiny_model("queued-timeout");
    let (engine, tokenizer) = load_decoder(&dir).unwrap();
    let backend = Backend::new(engine, true);
    let metrics = Arc::new(Metrics::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let arrived = Instant::now();
    let mut receivers = Vec::new();
    // Both jobs wait in the queue before the model thread starts; the second one's
    // deadline has already passed when it is taken off the queue.
    for (prompt, deadline) in [
        (vec![5u32, 6, 7], Some(arrived + Duration::from_secs(600))),
        (vec![8u32, 9, 10, 11], Some(arrived)),
    ] {
        let (events, rx_events) = tokio::sync::mpsc::unbounded_channel();
        let job = GenJob {
            prompt_tokens: prompt.len(),
            prompt,
            max_tokens: 3,
            sampling: SamplingConfig {
                ignore_eos: true,
                ..SamplingConfig::default()
            },
            stop: Vec::new(),
            end_ids: Vec::new(),
            arrived,
            deadline,
            events,
        };
        metrics.queue_depth.fetch_add(1, Ordering::SeqCst);
        tx.send(Job::Generate(job)).unwrap();
        receivers.push(rx_events);
    }
    drop(tx);
    std::thread::sleep(Duration::from_millis(2));
    run(
        EngineModel::Lm { backend, tokenizer },
        rx,
        metrics.clone(),
        1,
    );
    let drain = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>| {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            out.push(e);
        }
        out
    };
    let first = drain(&mut receivers[0]);
    match first.last() {
        Some(Event::Done(f)) => assert_eq!((f.reason, f.completion_tokens), ("length", 3)),
        other => panic!("the first request should finish normally, got {other:?}"),
    }
    let second = drain(&mut receivers[1]);
    assert_eq!(second.len(), 1, "only the error is sent: {second:?}");
    match &second[0] {
        Event::Error(e) => {
            let (status, body) = (e.status, e.body());
            assert_eq!(status, 504);
            assert_eq!(body["error"]["code"], "timeout", "{body}");
        }
        other => panic!("expected the timeout error, got {other:?}"),
    }
    // Only the first prompt went through the model.
    assert_eq!(metrics.prompt_tokens.load(Ordering::SeqCst), 3);
    assert_eq!(metrics.tokens_generated.load(Ordering::SeqCst), 3);
    assert_eq!(metrics.finished_count("timeout"), 1);
    assert_eq!(metrics.finished_count("length"), 1);
    assert_eq!(metrics.queue_depth.load(Ordering::SeqCst), 0);
}
