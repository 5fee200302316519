//! Decoding an encoder-decoder model: greedy and beam search with the semantics of
//! transformers' `generate(num_beams=N, length_penalty=A, early_stopping=True)`: the
//! 2N best continuations of all beams each step, an end-of-sentence continuation kept as
//! a finished hypothesis only when it ranks among the first N, hypotheses scored by
//! summed log-probability over (generated length)^A, and a sentence done once N
//! hypotheses are finished. The last position is forced to end-of-sentence when the
//! model's generation config asks for it.

use rayon::prelude::*;

use crate::engine::{DecoderState, Seq2Seq, Want};
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct BeamConfig {
    /// 1 means greedy.
    pub num_beams: usize,
    pub length_penalty: f64,
    /// Tokens to generate at most (after the start token).
    pub max_new_tokens: usize,
    /// Force end-of-sentence as the last token when the length limit is reached.
    pub forced_eos: bool,
    /// Tokens never generated (a generation config's one-token `bad_words_ids`, as
    /// Marian models ban `<pad>`): their log-probabilities are set to −∞ after the
    /// softmax, as transformers' logits processor does.
    pub suppress: Vec<u32>,
    /// End-of-sentence is banned until this many tokens are generated (transformers'
    /// `min_new_tokens`).
    pub min_new_tokens: usize,
    /// No n-gram of this size occurs twice in a hypothesis (the decoder's start token
    /// counted, as transformers' `no_repeat_ngram_size` counts it); 0: no limit.
    pub no_repeat_ngram_size: usize,
}

impl Default for BeamConfig {
    fn default() -> Self {
        BeamConfig {
            num_beams: 4,
            length_penalty: 1.0,
            max_new_tokens: 128,
            forced_eos: true,
            suppress: Vec::new(),
            min_new_tokens: 0,
            no_repeat_ngram_size: 0,
        }
    }
}

/// The tokens that would repeat an `n`-gram of `seq` (which starts with the decoder's
/// start token): those that followed an earlier occurrence of its last `n − 1` tokens.
fn repeated_ngram_ends(seq: &[u32], n: usize) -> Vec<u32> {
    if n == 0 || seq.len() + 1 < n {
        return Vec::new();
    }
    let tail = &seq[seq.len() + 1 - n..];
    seq.windows(n)
        .filter(|w| &w[..n - 1] == tail)
        .map(|w| w[n - 1])
        .collect()
}

/// One decoded sentence: the ids after the start token (end-of-sentence included when
/// produced) and its score (normalised log-probability for beams; summed for greedy).
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    pub ids: Vec<u32>,
    pub score: f64,
}

/// Decode one source sentence.
pub fn translate(model: &Seq2Seq, src: &[u32], cfg: &BeamConfig) -> Result<Hypothesis> {
    Ok(translate_batch(model, &[src], cfg)?.swap_remove(0))
}

/// The `m` best continuations of one hypothesis from its logits: (log-probability,
/// token), best first, ties to the lower token. At the length limit, when the config
/// forces it, end-of-sentence has probability 1 and every other token 0.
fn best_tokens(
    row: &mut [f32],
    m: usize,
    forced: Option<u32>,
    suppress: &[u32],
) -> Vec<(f32, u32)> {
    match forced {
        Some(eos) => {
            row.iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
            row[eos as usize] = 0.0;
        }
        None => {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
            let lse = max + sum.ln() as f32;
            row.iter_mut().for_each(|x| *x -= lse);
            for &t in suppress {
                if let Some(x) = row.get_mut(t as usize) {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
    }
    let order = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    let mut cand: Vec<(f32, u32)> = row
        .iter()
        .enumerate()
        .map(|(t, &lp)| (lp, t as u32))
        .collect();
    let m = m.min(cand.len());
    if m < cand.len() {
        cand.select_nth_unstable_by(m - 1, order);
        cand.truncate(m);
    }
    cand.sort_by(order);
    cand
}

/// The search state of one sentence: its `k` live beams and its finished hypotheses.
struct Search {
    seqs: Vec<Vec<u32>>,
    scores: Vec<f64>,
    finished: Vec<Hypothesis>,
    done: bool,
}

/// Decode a batch of source sentences together: one decoder call per step for all the
/// live beams of all unfinished sentences; a sentence leaves the batch once it is done.
/// Each sentence is encoded once and its beams share the encoder's keys and values.
/// Each result is what [`translate`] gives for that sentence alone.
pub fn translate_batch(
    model: &Seq2Seq,
    srcs: &[&[u32]],
    cfg: &BeamConfig,
) -> Result<Vec<Hypothesis>> {
    if cfg.num_beams == 0 || cfg.max_new_tokens == 0 {
        return Err(Error::invalid(
            "beam",
            "num_beams and max_new_tokens must be at least 1",
        ));
    }
    if srcs.is_empty() {
        return Ok(vec![]);
    }
    if srcs.iter().any(|s| s.is_empty()) {
        return Err(Error::invalid("source", "an empty source sentence"));
    }
    let (eos, start) = (model.spec.eos, model.spec.decoder_start);
    let k = cfg.num_beams;
    // Candidates kept per hypothesis: the best 2k over all beams of a sentence are
    // among the best 2k of each beam.
    let per_row = if k == 1 { 1 } else { 2 * k };
    let mut mems: Vec<Option<crate::engine::Memory>> =
        model.memories(srcs)?.into_iter().map(Some).collect();
    // Only the first beam of each sentence is live at the start, as transformers does:
    // the first step decodes one hypothesis per sentence and its continuations seed
    // all k beams.
    let mut states: Vec<Search> = srcs
        .iter()
        .map(|_| Search {
            seqs: vec![vec![]; k],
            scores: (0..k).map(|i| if i == 0 { 0.0 } else { -1e9 }).collect(),
            finished: vec![],
            done: false,
        })
        .collect();
    // The sentences still in the batch, in row order, and their hypotheses' caches
    // (one per sentence at the first step, then k each).
    let mut active: Vec<usize> = (0..srcs.len()).collect();
    let mut caches: Vec<DecoderState> = (0..srcs.len()).map(|_| model.new_state()).collect();
    let mut last: Vec<u32> = vec![start; srcs.len()];
    for step in 0..cfg.max_new_tokens {
        let cur_len = step + 1;
        let rows_per = if step == 0 { 1 } else { k };
        let memories: Vec<&crate::engine::Memory> = active
            .iter()
            .flat_map(|&si| std::iter::repeat_n(mems[si].as_ref().unwrap(), rows_per))
            .collect();
        let tokens: Vec<[u32; 1]> = last.iter().map(|&t| [t]).collect();
        let token_refs: Vec<&[u32]> = tokens.iter().map(|t| t.as_slice()).collect();
        let mut refs: Vec<&mut DecoderState> = caches.iter_mut().collect();
        let mut logits = model.decode(&memories, &mut refs, &token_refs, Want::Last)?;
        let forced = (cfg.forced_eos && cur_len == cfg.max_new_tokens).then_some(eos);
        // Each row's banned tokens: the config's, end-of-sentence before the minimum
        // length, and the ends of repeated n-grams.
        let banned: Vec<Vec<u32>> = active
            .iter()
            .flat_map(|&si| (0..rows_per).map(move |b| (si, b)))
            .map(|(si, b)| {
                let mut ban = cfg.suppress.clone();
                if step < cfg.min_new_tokens {
                    ban.push(eos);
                }
                if cfg.no_repeat_ngram_size > 0 {
                    let mut seq = vec![start];
                    seq.extend(&states[si].seqs[b]);
                    ban.extend(repeated_ngram_ends(&seq, cfg.no_repeat_ngram_size));
                }
                ban
            })
            .collect();
        let best: Vec<Vec<(f32, u32)>> = logits
            .par_iter_mut()
            .zip(&banned)
            .map(|(row, ban)| best_tokens(row, per_row, forced, ban))
            .collect();
        // The caches of the next step (indices into this step's) and their tokens.
        let (mut keep, mut next_last, mut next_active) = (vec![], vec![], vec![]);
        for (slot, &si) in active.iter().enumerate() {
            let st = &mut states[si];
            let rows: Vec<&[(f32, u32)]> = (0..k)
                .map(|b| best[slot * rows_per + b.min(rows_per - 1)].as_slice())
                .collect();
            let chosen = if k == 1 {
                greedy_step(st, rows[0], eos)
            } else {
                beam_step(
                    st,
                    &rows,
                    k,
                    eos,
                    cfg.length_penalty,
                    cur_len == cfg.max_new_tokens,
                )
            };
            if st.done {
                mems[si] = None;
                continue;
            }
            next_active.push(si);
            for (b, t) in chosen {
                keep.push(slot * rows_per + b.min(rows_per - 1));
                next_last.push(t);
            }
        }
        if next_active.is_empty() {
            break;
        }
        caches = reorder(caches, &keep);
        active = next_active;
        last = next_last;
    }
    states
        .into_iter()
        .map(|st| finish(st, k, cfg.length_penalty))
        .collect()
}

/// The caches `keep` names, in that order: moved when named once, copied otherwise.
fn reorder(caches: Vec<DecoderState>, keep: &[usize]) -> Vec<DecoderState> {
    let mut uses = vec![0usize; caches.len()];
    keep.iter().for_each(|&i| uses[i] += 1);
    let mut old: Vec<Option<DecoderState>> = caches.into_iter().map(Some).collect();
    keep.iter()
        .map(|&i| {
            uses[i] -= 1;
            if uses[i] == 0 {
                old[i]
                    .take()
                    .expect("a cache is moved once, after its copies")
            } else {
                old[i].clone().expect("copies come before the move")
            }
        })
        .collect()
}

/// Greedy: extend the single beam with its most likely token; returns (beam, token).
fn greedy_step(st: &mut Search, best: &[(f32, u32)], eos: u32) -> Vec<(usize, u32)> {
    let (lp, tok) = best[0];
    st.seqs[0].push(tok);
    st.scores[0] += lp as f64;
    if tok == eos {
        st.done = true;
    }
    vec![(0, tok)]
}

/// One beam-search step for one sentence: the 2k best (beam, token) continuations by
/// accumulated score (`rows[b]`: beam b's best continuations, see [`best_tokens`]);
/// returns the k kept as (beam, token), in rank order. At the `last` step (the length
/// limit) the k best continuations all finish, whatever their token, and compete with
/// the hypotheses finished before, as transformers' length criterion makes them.
fn beam_step(
    st: &mut Search,
    rows: &[&[(f32, u32)]],
    k: usize,
    eos: u32,
    length_penalty: f64,
    last: bool,
) -> Vec<(usize, u32)> {
    let mut cand: Vec<(f64, usize, u32)> = Vec::with_capacity(rows.len() * 2 * k);
    for (b, row) in rows.iter().enumerate() {
        for &(lp, t) in row.iter() {
            cand.push((st.scores[b] + lp as f64, b, t));
        }
    }
    let top = (2 * k).min(cand.len());
    cand.select_nth_unstable_by(top - 1, |a, b| b.0.total_cmp(&a.0));
    cand.truncate(top);
    cand.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    if last {
        for &(score, beam, tok) in cand.iter().take(k) {
            let mut ids = st.seqs[beam].clone();
            ids.push(tok);
            let norm = score / (ids.len() as f64).powf(length_penalty);
            add_finished(&mut st.finished, Hypothesis { ids, score: norm }, k);
        }
        st.done = true;
        return vec![];
    }
    let mut next: Vec<(f64, usize, u32)> = Vec::with_capacity(k);
    for (rank, &(score, beam, tok)) in cand.iter().enumerate() {
        if tok == eos {
            if rank >= k {
                continue;
            }
            let mut ids = st.seqs[beam].clone();
            ids.push(eos);
            let norm = score / (ids.len() as f64).powf(length_penalty);
            add_finished(&mut st.finished, Hypothesis { ids, score: norm }, k);
        } else {
            next.push((score, beam, tok));
        }
        if next.len() == k {
            break;
        }
    }
    if st.finished.len() == k || next.len() < k {
        st.done = true;
        return vec![];
    }
    st.seqs = next
        .iter()
        .map(|&(_, b, t)| {
            let mut s = st.seqs[b].clone();
            s.push(t);
            s
        })
        .collect();
    st.scores = next.iter().map(|n| n.0).collect();
    next.iter().map(|&(_, b, t)| (b, t)).collect()
}

/// The best hypothesis of a finished (or length-limited) search.
fn finish(mut st: Search, k: usize, length_penalty: f64) -> Result<Hypothesis> {
    if k == 1 {
        return Ok(Hypothesis {
            ids: st.seqs.swap_remove(0),
            score: st.scores[0],
        });
    }
    if st.finished.len() < k {
        // The length limit came first: the running beams count as finished.
        for (s, score) in st.seqs.into_iter().zip(st.scores) {
            let norm = score / (s.len() as f64).powf(length_penalty);
            add_finished(
                &mut st.finished,
                Hypothesis {
                    ids: s,
                    score: norm,
                },
                k,
            );
        }
    }
    st.finished
        .into_iter()
        .max_by(|a, b| a.score.total_cmp(&b.score))
        .ok_or_else(|| Error::Model("beam search produced no hypothesis".into()))
}

/// Keep the `k` best finished hypotheses.
fn add_finished(finished: &mut Vec<Hypothesis>, h: Hypothesis, k: usize) {
    if finished.len() < k {
        finished.push(h);
        return;
    }
    let (worst, ws) = finished
        .iter()
        .enumerate()
        .map(|(i, f)| (i, f.score))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    if h.score > ws {
        finished[worst] = h;
    }
}
