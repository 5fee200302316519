//! The model thread. One OS thread owns the model (its passes are synchronous); the HTTP
//! side sends it jobs over a channel. Each turn of its loop admits waiting jobs up to
//! `--max-concurrency` running sequences (running each new prompt through the model),
//! samples one token for every running sequence, streams the new text to its client,
//! and runs one decode step for all of them together.
//!
//! A sequence ends at its end-of-text token, a stop string, `max_tokens`, its deadline,
//! or as soon as its client has gone away (the receiving end of its channel is closed).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use attn::generate::{Sampler, SamplingConfig};
use attn::tokenizer::{StreamDecoder, Tokenizer};
use tokio::sync::{mpsc::UnboundedSender, oneshot};

use crate::api::ApiError;
use crate::backend::{AttentionMaps, Backend, SeqCache};
use crate::metrics::Metrics;

/// What a generation sends back, in order: text pieces, then `Done` or `Error`.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Done(Finish),
    Error(ApiError),
}

#[derive(Debug, Clone, Copy)]
pub struct Finish {
    /// OpenAI's `finish_reason`: `stop` or `length`.
    pub reason: &'static str,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

pub struct GenJob {
    /// Prompt ids, already cut to fit the context.
    pub prompt: Vec<u32>,
    /// Prompt length as the client sent it (for `usage`).
    pub prompt_tokens: usize,
    pub max_tokens: usize,
    pub sampling: SamplingConfig,
    pub stop: Vec<String>,
    /// Ids that end the answer as the end-of-text id does (a chat template's
    /// `eos_token`); ignored with `ignore_eos`.
    pub end_ids: Vec<u32>,
    pub arrived: Instant,
    /// When the request's time is up; `None` when `arrived + --request-timeout` is past
    /// what an `Instant` can hold (then there is no limit).
    pub deadline: Option<Instant>,
    pub events: UnboundedSender<Event>,
}

pub enum Job {
    Generate(GenJob),
    Attention {
        ids: Vec<u32>,
        reply: oneshot::Sender<Result<AttentionMaps, ApiError>>,
    },
    Embed {
        batch: Vec<Vec<u32>>,
        reply: oneshot::Sender<Result<Vec<Vec<f32>>, ApiError>>,
    },
}

pub enum EngineModel {
    Lm {
        backend: Backend,
        tokenizer: Tokenizer,
    },
    Bert(attn::checkpoint::LoadedBert),
}

fn guarded<T>(what: &str, f: impl FnOnce() -> attn::Result<T>) -> Result<T, ApiError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ApiError::internal(format!("{what} failed: {e}"))),
        Err(_) => Err(ApiError::internal(format!(
            "{what} failed (internal panic)"
        ))),
    }
}

/// Run jobs until every sender is gone.
pub fn run(model: EngineModel, rx: Receiver<Job>, metrics: Arc<Metrics>, max_concurrency: usize) {
    match model {
        EngineModel::Lm { backend, tokenizer } => Lm {
            backend: &backend,
            tokenizer: &tokenizer,
            metrics: &metrics,
            max_concurrency,
        }
        .run(rx),
        EngineModel::Bert(bert) => {
            while let Ok(job) = rx.recv() {
                metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                match job {
                    Job::Embed { batch, reply } => {
                        let _ = reply.send(guarded("embedding", || embed(&bert, &batch)));
                    }
                    Job::Attention { reply, .. } => {
                        let _ = reply.send(Err(ApiError::bad_request(
                            "attention maps need a decoder (GPT-2 or Llama) model",
                        )));
                    }
                    Job::Generate(g) => {
                        let _ = g.events.send(Event::Error(ApiError::bad_request(
                            "this model does not generate text",
                        )));
                    }
                }
            }
        }
    }
}

/// Mean-pooled, L2-normalised sentence embeddings (sentence-transformers' recipe).
fn embed(bert: &attn::checkpoint::LoadedBert, batch: &[Vec<u32>]) -> attn::Result<Vec<Vec<f32>>> {
    let seqs: Vec<&[u32]> = batch.iter().map(Vec::as_slice).collect();
    bert.encoder.embed(&seqs, attn::engine::Pooling::Mean, true)
}

struct Seq<'t> {
    job: GenJob,
    sampler: Sampler,
    history: Vec<u32>,
    cache: SeqCache,
    logits: Vec<f32>,
    generated: usize,
    decoder: StreamDecoder<'t>,
    text: String,
    emitted: usize,
    last: u32,
    last_time: Option<Instant>,
    /// Logits are already fresh (the cache was just rebuilt): skip this decode step.
    fresh: bool,
}

struct Lm<'a> {
    backend: &'a Backend,
    tokenizer: &'a Tokenizer,
    metrics: &'a Metrics,
    max_concurrency: usize,
}

impl<'a> Lm<'a> {
    fn run(&self, rx: Receiver<Job>) {
        let mut active: Vec<Seq<'a>> = Vec::new();
        loop {
            let mut admitted: Vec<GenJob> = Vec::new();
            while active.len() + admitted.len() < self.max_concurrency {
                let job = if active.is_empty() && admitted.is_empty() {
                    match rx.recv() {
                        Ok(j) => j,
                        Err(_) => return,
                    }
                } else {
                    match rx.try_recv() {
                        Ok(j) => j,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => return,
                    }
                };
                self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                match job {
                    Job::Generate(g) => admitted.push(g),
                    Job::Attention { ids, reply } => {
                        let _ = reply.send(guarded("attention", || self.backend.attention(&ids)));
                    }
                    Job::Embed { reply, .. } => {
                        let _ = reply.send(Err(ApiError::bad_request(
                            "embeddings need an encoder model (bert, roberta, xlm-roberta, distilbert)",
                        )));
                    }
                }
            }
            active.extend(self.start(admitted));
            self.metrics.active.store(active.len(), Ordering::Relaxed);
            if active.is_empty() {
                continue;
            }
            let mut running: Vec<Seq<'a>> =
                active.drain(..).filter_map(|s| self.advance(s)).collect();
            let mut rows: Vec<(&mut SeqCache, u32)> = running
                .iter_mut()
                .filter(|s| !s.fresh)
                .map(|s| (&mut s.cache, s.last))
                .collect();
            if !rows.is_empty() {
                self.metrics.batch(rows.len());
                match guarded("decode step", || self.backend.step(&mut rows)) {
                    Ok(logits) => {
                        let mut it = logits.into_iter();
                        for s in running.iter_mut() {
                            if !s.fresh {
                                s.logits = it.next().unwrap_or_default();
                            }
                        }
                    }
                    Err(e) => {
                        for s in running.drain(..) {
                            self.metrics.finished("error");
                            let _ = s.job.events.send(Event::Error(e.clone()));
                        }
                    }
                }
            }
            running.iter_mut().for_each(|s| s.fresh = false);
            active = running;
            self.metrics.active.store(active.len(), Ordering::Relaxed);
        }
    }

    /// Admit jobs: run their prompts through the model, prompts of similar length
    /// together (one ragged pass).
    fn start(&self, jobs: Vec<GenJob>) -> Vec<Seq<'a>> {
        let now = Instant::now();
        let mut jobs: Vec<GenJob> = jobs
            .into_iter()
            .filter(|job| {
                if job.events.is_closed() {
                    self.metrics.finished("client_disconnected");
                    return false;
                }
                if job.deadline.is_some_and(|d| now > d) {
                    self.metrics.finished("timeout");
                    let _ = job.events.send(Event::Error(timeout_error()));
                    return false;
                }
                true
            })
            .collect();
        jobs.sort_by_key(|j| j.prompt.len());
        let mut out = Vec::with_capacity(jobs.len());
        let lens: Vec<usize> = jobs.iter().map(|j| j.prompt.len()).collect();
        let mut jobs = jobs.into_iter();
        let mut at = 0;
        while at < lens.len() {
            let n = prefill_group_len(&lens[at..]);
            at += n;
            let group: Vec<GenJob> = jobs.by_ref().take(n).collect();
            let prompts: Vec<&[u32]> = group.iter().map(|j| j.prompt.as_slice()).collect();
            match guarded("prompt", || self.backend.prefill_many(&prompts)) {
                Ok(results) => {
                    for (job, (cache, logits)) in group.into_iter().zip(results) {
                        self.metrics
                            .prompt_tokens
                            .fetch_add(job.prompt.len() as u64, Ordering::Relaxed);
                        out.push(Seq {
                            history: job.prompt.clone(),
                            sampler: Sampler::new(job.sampling.clone(), self.backend.vocab_size()),
                            cache,
                            logits,
                            generated: 0,
                            decoder: StreamDecoder::new(self.tokenizer),
                            text: String::new(),
                            emitted: 0,
                            last: 0,
                            last_time: None,
                            fresh: false,
                            job,
                        });
                    }
                }
                Err(e) => {
                    for job in group {
                        self.metrics.finished("error");
                        let _ = job.events.send(Event::Error(e.clone()));
                    }
                }
            }
        }
        out
    }

    fn finish(&self, s: &mut Seq, reason: &'static str) {
        if s.emitted < s.text.len() {
            let _ = s
                .job
                .events
                .send(Event::Text(s.text[s.emitted..].to_string()));
            s.emitted = s.text.len();
        }
        self.metrics.finished(reason);
        let _ = s.job.events.send(Event::Done(Finish {
            reason,
            prompt_tokens: s.job.prompt_tokens,
            completion_tokens: s.generated,
        }));
    }

    /// Sample the next token of `s` and send any text it completes; `None` once done.
    fn advance(&self, mut s: Seq<'a>) -> Option<Seq<'a>> {
        if s.job.events.is_closed() {
            self.metrics.finished("client_disconnected");
            return None;
        }
        let now = Instant::now();
        if s.job.deadline.is_some_and(|d| now > d) {
            self.metrics.finished("timeout");
            let _ = s.job.events.send(Event::Error(timeout_error()));
            return None;
        }
        let next = s.sampler.sample(&mut s.logits, &s.history);
        let now = Instant::now();
        match s.last_time {
            None => self
                .metrics
                .ttft(now.duration_since(s.job.arrived).as_secs_f64()),
            Some(t) => self.metrics.per_token(now.duration_since(t).as_secs_f64()),
        }
        s.last_time = Some(now);
        let eos = if s.job.sampling.ignore_eos {
            None
        } else {
            self.backend.eos()
        };
        if Some(next) == eos || (!s.job.sampling.ignore_eos && s.job.end_ids.contains(&next)) {
            self.finish(&mut s, "stop");
            return None;
        }
        s.generated += 1;
        self.metrics
            .tokens_generated
            .fetch_add(1, Ordering::Relaxed);
        s.history.push(next);
        s.last = next;
        match s.decoder.push(next) {
            Ok(piece) => s.text.push_str(&piece),
            Err(e) => {
                self.metrics.finished("error");
                let _ = s.job.events.send(Event::Error(ApiError::internal(format!(
                    "decoding failed: {e}"
                ))));
                return None;
            }
        }
        let found = s
            .job
            .stop
            .iter()
            .filter_map(|st| s.text[s.emitted..].find(st.as_str()).map(|p| p + s.emitted))
            .min();
        if let Some(pos) = found {
            s.text.truncate(pos);
            self.finish(&mut s, "stop");
            return None;
        }
        let safe = safe_prefix_len(&s.text, s.emitted, &s.job.stop);
        if safe > s.emitted {
            let _ = s
                .job
                .events
                .send(Event::Text(s.text[s.emitted..safe].to_string()));
            s.emitted = safe;
        }
        if s.generated >= s.job.max_tokens {
            self.finish(&mut s, "length");
            return None;
        }
        let ctx = self.backend.context();
        if s.cache.len() >= ctx {
            // The window is full: keep the most recent half and rebuild its cache.
            let keep = &s.history[s.history.len() - (ctx / 2).max(1)..];
            match guarded("context refill", || self.backend.prefill(keep)) {
                Ok((cache, logits)) => {
                    s.cache = cache;
                    s.logits = logits;
                    s.fresh = true;
                }
                Err(e) => {
                    self.metrics.finished("error");
                    let _ = s.job.events.send(Event::Error(e));
                    return None;
                }
            }
        }
        Some(s)
    }
}

/// How many of `sorted` (prompts by increasing length) to run in one padded pass: as
/// many as keep the padding under half the real tokens (plus a little slack).
fn prefill_group_len(sorted: &[usize]) -> usize {
    let mut real = 0;
    let mut n = 0;
    for &len in sorted {
        // The group's padded size if this prompt (the longest so far) joins.
        if n > 0 && len * (n + 1) > (real + len) * 3 / 2 + 16 {
            break;
        }
        real += len;
        n += 1;
    }
    n.max(1)
}

pub fn timeout_error() -> ApiError {
    ApiError::new(
        504,
        "timeout_error",
        "the request ran past this server's time limit (--request-timeout)",
    )
    .with_code("timeout")
}

/// The end of the part of `text` that can be sent: all but a suffix that could be the
/// beginning of a stop string.
pub fn safe_prefix_len(text: &str, from: usize, stop: &[String]) -> usize {
    let mut safe = text.len();
    for s in stop {
        for (i, _) in text[from..].char_indices() {
            let tail = &text[from + i..];
            if tail.len() < s.len() && s.starts_with(tail) {
                safe = safe.min(from + i);
                break;
            }
        }
    }
    safe
}

#[cfg(test)]
mod tests {
    #[test]
    fn prompts_of_similar_length_share_a_prefill() {
        assert_eq!(super::prefill_group_len(&[3, 3, 4, 5, 6]), 5);
        assert_eq!(super::prefill_group_len(&[2, 2, 300]), 2);
        assert_eq!(super::prefill_group_len(&[300]), 1);
    }

    #[test]
    fn stop_prefixes_are_held_back() {
        let stop = vec!["\nUser:".to_string()];
        assert_eq!(super::safe_prefix_len("Hello\nUs", 0, &stop), 5);
        assert_eq!(super::safe_prefix_len("Hello", 2, &stop), 5);
    }
}
