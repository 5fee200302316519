//! Decoding an encoder-decoder model: greedy and beam search with the semantics of
//! transformers' `generate(num_beams=N, length_penalty=A, early_stopping=True)`: the
//! 2N best continuations of all beams each step, an end-of-sentence continuation kept as
//! a finished hypothesis only when it ranks among the first N, hypotheses scored by
//! summed log-probability over (generated length)^A, and a sentence done once N
//! hypotheses are finished. The last position is forced to end-of-sentence when the
//! model's generation config asks for it.

use candle_core::{DType, Tensor, D};

use crate::models::marian::Marian;
use crate::nn::Mode;
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
}

impl Default for BeamConfig {
    fn default() -> Self {
        BeamConfig {
            num_beams: 4,
            length_penalty: 1.0,
            max_new_tokens: 128,
            forced_eos: true,
        }
    }
}

/// One decoded sentence: the ids after the start token (end-of-sentence included when
/// produced) and its score (normalised log-probability for beams; summed for greedy).
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    pub ids: Vec<u32>,
    pub score: f64,
}

fn log_softmax_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    let l = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    Ok(l.to_vec2::<f32>()?)
}

/// Encoder outputs for a batch of source sentences (token ids with end-of-sentence),
/// padded to the longest, each row repeated `copies` times (one per beam).
fn encode_batch(model: &Marian, srcs: &[&[u32]], copies: usize) -> Result<(Tensor, Tensor)> {
    let dev = model.device().clone();
    let pad = model.config.pad_token_id;
    let s_len = srcs.iter().map(|s| s.len()).max().unwrap_or(0);
    if s_len == 0 || srcs.iter().any(|s| s.is_empty()) {
        return Err(Error::invalid("source", "an empty source sentence"));
    }
    let (mut ids, mut mask) = (vec![], vec![]);
    for s in srcs {
        ids.extend(s.iter().copied().chain(std::iter::repeat(pad)).take(s_len));
        mask.extend((0..s_len).map(|j| u32::from(j < s.len())));
    }
    let ids = Tensor::from_vec(ids, (srcs.len(), s_len), &dev)?;
    let mask = Tensor::from_vec(mask, (srcs.len(), s_len), &dev)?;
    let enc = model.encode(&ids, &mask, &mut Mode::Eval)?;
    if copies == 1 {
        return Ok((enc, mask));
    }
    let rep: Vec<u32> = (0..srcs.len() as u32)
        .flat_map(|i| std::iter::repeat_n(i, copies))
        .collect();
    let rep = Tensor::new(rep.as_slice(), &dev)?;
    Ok((enc.index_select(&rep, 0)?, mask.index_select(&rep, 0)?))
}

/// Apply the forced end-of-sentence rule for a sequence of `cur_len` tokens (start included).
fn force_eos(rows: &mut [Vec<f32>], cur_len: usize, cfg: &BeamConfig, eos: u32) {
    if cfg.forced_eos && cur_len == cfg.max_new_tokens {
        for r in rows.iter_mut() {
            r.iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
            r[eos as usize] = 0.0;
        }
    }
}

/// Decode one source sentence.
pub fn translate(model: &Marian, src: &[u32], cfg: &BeamConfig) -> Result<Hypothesis> {
    Ok(translate_batch(model, &[src], cfg)?.swap_remove(0))
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
/// Each result is what [`translate`] gives for that sentence alone.
pub fn translate_batch(
    model: &Marian,
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
    let c = &model.config;
    let (eos, start) = (c.eos_token_id, c.decoder_start_token_id);
    let k = cfg.num_beams;
    let dev = model.device().clone();
    let (mut enc, mut mask) = encode_batch(model, srcs, k)?;
    let mut cache = model.new_cache(&enc)?;
    // Only the first beam of each sentence is live at the start, as transformers does.
    let mut states: Vec<Search> = srcs
        .iter()
        .map(|_| Search {
            seqs: vec![vec![]; k],
            scores: (0..k).map(|i| if i == 0 { 0.0 } else { -1e9 }).collect(),
            finished: vec![],
            done: false,
        })
        .collect();
    // The sentences still in the batch, in row order (each owns k consecutive rows).
    let mut active: Vec<usize> = (0..srcs.len()).collect();
    let mut last: Vec<u32> = vec![start; active.len() * k];
    for step in 0..cfg.max_new_tokens {
        let cur_len = step + 1;
        let x = Tensor::new(last.as_slice(), &dev)?.unsqueeze(1)?;
        let h = model.decode_hidden(&x, &enc, &mask, Some(&mut cache), &mut Mode::Eval)?;
        let mut rows = log_softmax_rows(&model.logits(&h)?.squeeze(1)?)?;
        force_eos(&mut rows, cur_len, cfg, eos);
        // Rows of the next step's batch (indices into this step's rows) and their tokens.
        let (mut keep, mut next_last, mut next_active) = (vec![], vec![], vec![]);
        // Rows (k per sentence) of the sentences that stay, for the encoder side.
        let mut stay_rows: Vec<u32> = vec![];
        for (slot, &si) in active.iter().enumerate() {
            let st = &mut states[si];
            let rows = &rows[slot * k..(slot + 1) * k];
            let chosen = if k == 1 {
                greedy_step(st, &rows[0], eos)
            } else {
                beam_step(st, rows, k, eos, cfg.length_penalty)
            };
            if st.done {
                continue;
            }
            next_active.push(si);
            stay_rows.extend((slot * k) as u32..((slot + 1) * k) as u32);
            for (b, t) in chosen {
                keep.push((slot * k + b) as u32);
                next_last.push(t);
            }
        }
        if next_active.is_empty() {
            break;
        }
        let idx = Tensor::new(keep.as_slice(), &dev)?;
        cache.self_attn.select(&idx)?;
        if next_active.len() != active.len() {
            // Sentences left: drop their rows from the encoder side too.
            let rows = Tensor::new(stay_rows.as_slice(), &dev)?;
            enc = enc.index_select(&rows, 0)?;
            mask = mask.index_select(&rows, 0)?;
            cache.select_cross(&rows)?;
        }
        active = next_active;
        last = next_last;
    }
    states
        .into_iter()
        .map(|st| finish(st, k, cfg.length_penalty))
        .collect()
}

/// Greedy: extend the single beam with its most likely token; returns (beam, token).
fn greedy_step(st: &mut Search, row: &[f32], eos: u32) -> Vec<(usize, u32)> {
    let (tok, lp) = row
        .iter()
        .enumerate()
        .fold((0usize, f32::NEG_INFINITY), |b, (i, &v)| {
            if v > b.1 {
                (i, v)
            } else {
                b
            }
        });
    st.seqs[0].push(tok as u32);
    st.scores[0] += lp as f64;
    if tok as u32 == eos {
        st.done = true;
    }
    vec![(0, tok as u32)]
}

/// One beam-search step for one sentence: the 2k best (beam, token) continuations by
/// accumulated score; returns the k kept as (beam, token), in rank order.
fn beam_step(
    st: &mut Search,
    rows: &[Vec<f32>],
    k: usize,
    eos: u32,
    length_penalty: f64,
) -> Vec<(usize, u32)> {
    let v = rows[0].len();
    let mut cand: Vec<(f64, usize, u32)> = Vec::with_capacity(k * v);
    for (b, row) in rows.iter().enumerate() {
        for (t, &lp) in row.iter().enumerate() {
            cand.push((st.scores[b] + lp as f64, b, t as u32));
        }
    }
    let top = (2 * k).min(cand.len());
    cand.select_nth_unstable_by(top - 1, |a, b| b.0.total_cmp(&a.0));
    cand.truncate(top);
    cand.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
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
