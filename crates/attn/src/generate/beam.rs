//! Decoding an encoder-decoder model: greedy and beam search with the semantics of
//! transformers' `generate(num_beams=N, length_penalty=A, early_stopping=True)`: the
//! 2N best continuations of all beams each step, an end-of-sentence continuation kept as
//! a finished hypothesis only when it ranks among the first N, hypotheses scored by
//! summed log-probability over (generated length)^A, and a sentence done once N
//! hypotheses are finished. The last position is forced to end-of-sentence when the
//! model's generation config asks for it.

use candle_core::{DType, Device, Tensor, D};

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

/// The model's view of one source sentence (token ids with end-of-sentence).
fn encode(model: &Marian, src: &[u32], copies: usize) -> Result<(Tensor, Tensor)> {
    if src.is_empty() {
        return Err(Error::invalid("source", "an empty source sentence"));
    }
    let dev = Device::Cpu;
    let ids = Tensor::new(src, &dev)?.unsqueeze(0)?;
    let mask = Tensor::ones((1, src.len()), DType::U32, &dev)?;
    let enc = model.encode(&ids, &mask, &mut Mode::Eval)?;
    let enc = enc.repeat((copies, 1, 1))?;
    let mask = mask.repeat((copies, 1))?;
    Ok((enc, mask))
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
    if cfg.num_beams == 0 || cfg.max_new_tokens == 0 {
        return Err(Error::invalid(
            "beam",
            "num_beams and max_new_tokens must be at least 1",
        ));
    }
    let c = &model.config;
    let (eos, start) = (c.eos_token_id, c.decoder_start_token_id);
    let k = cfg.num_beams;
    let dev = Device::Cpu;
    let (enc, mask) = encode(model, src, k)?;
    let mut cache = model.new_cache(&enc)?;
    let mut seqs: Vec<Vec<u32>> = vec![vec![]; k];
    let mut last: Vec<u32> = vec![start; k];
    // Only the first beam is live at the start, as transformers does.
    let mut scores: Vec<f64> = (0..k).map(|i| if i == 0 { 0.0 } else { -1e9 }).collect();
    let mut finished: Vec<Hypothesis> = vec![];
    for step in 0..cfg.max_new_tokens {
        let cur_len = step + 1;
        let x = Tensor::new(last.as_slice(), &dev)?.unsqueeze(1)?;
        let h = model.decode_hidden(&x, &enc, &mask, Some(&mut cache), &mut Mode::Eval)?;
        let mut rows = log_softmax_rows(&model.logits(&h)?.squeeze(1)?)?;
        force_eos(&mut rows, cur_len, cfg, eos);
        if k == 1 {
            let (tok, lp) =
                rows[0]
                    .iter()
                    .enumerate()
                    .fold((0usize, f32::NEG_INFINITY), |b, (i, &v)| {
                        if v > b.1 {
                            (i, v)
                        } else {
                            b
                        }
                    });
            seqs[0].push(tok as u32);
            scores[0] += lp as f64;
            if tok as u32 == eos {
                break;
            }
            last[0] = tok as u32;
            continue;
        }
        // The 2k best (beam, token) continuations by accumulated score.
        let v = rows[0].len();
        let mut cand: Vec<(f64, usize, u32)> = Vec::with_capacity(k * v);
        for (b, row) in rows.iter().enumerate() {
            for (t, &lp) in row.iter().enumerate() {
                cand.push((scores[b] + lp as f64, b, t as u32));
            }
        }
        let top = 2 * k;
        cand.select_nth_unstable_by(top - 1, |a, b| b.0.total_cmp(&a.0));
        cand.truncate(top);
        cand.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut next: Vec<(f64, usize, u32)> = Vec::with_capacity(k);
        for (rank, &(score, beam, tok)) in cand.iter().enumerate() {
            if tok == eos {
                if rank >= k {
                    continue;
                }
                let mut ids = seqs[beam].clone();
                ids.push(eos);
                let norm = score / (ids.len() as f64).powf(cfg.length_penalty);
                add_finished(&mut finished, Hypothesis { ids, score: norm }, k);
            } else {
                next.push((score, beam, tok));
            }
            if next.len() == k {
                break;
            }
        }
        if finished.len() == k {
            break;
        }
        let beams: Vec<u32> = next.iter().map(|n| n.1 as u32).collect();
        cache
            .self_attn
            .select(&Tensor::new(beams.as_slice(), &dev)?)?;
        seqs = next
            .iter()
            .map(|&(_, b, t)| {
                let mut s = seqs[b].clone();
                s.push(t);
                s
            })
            .collect();
        scores = next.iter().map(|n| n.0).collect();
        last = next.iter().map(|n| n.2).collect();
    }
    if k == 1 {
        return Ok(Hypothesis {
            ids: seqs.swap_remove(0),
            score: scores[0],
        });
    }
    if finished.len() < k {
        // The length limit came first: the running beams count as finished.
        for (s, score) in seqs.into_iter().zip(scores) {
            let norm = score / (s.len() as f64).powf(cfg.length_penalty);
            add_finished(
                &mut finished,
                Hypothesis {
                    ids: s,
                    score: norm,
                },
                k,
            );
        }
    }
    finished
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
