//! T5's span corruption (Raffel et al. 2020, §3.1.4): a random set of spans of a token
//! sequence is replaced in the input by one sentinel each, and the target lists each
//! sentinel followed by the tokens it hid. As in T5's `random_spans_noise_mask`, a
//! sequence of n tokens hides round(n · density) of them (at least 1, at most n − 1) in
//! round(hidden / mean_span) spans (at least 1), the spans and the kept stretches
//! between them each a random composition of their totals, starting with a kept
//! stretch; both sides end with end-of-sentence.

use crate::rng::Rng;

/// `total` split into `parts` positive lengths, uniformly among such splits (a random
/// choice of `parts − 1` cut points among the `total − 1` gaps).
fn random_composition(total: usize, parts: usize, rng: &mut Rng) -> Vec<usize> {
    debug_assert!(parts >= 1 && parts <= total);
    // Partial Fisher–Yates: the first parts − 1 of a shuffled list of the gaps.
    let mut gaps: Vec<usize> = (1..total).collect();
    for i in 0..parts - 1 {
        let j = i + rng.below(gaps.len() - i);
        gaps.swap(i, j);
    }
    let mut cuts = gaps[..parts - 1].to_vec();
    cuts.sort_unstable();
    let mut out = Vec::with_capacity(parts);
    let mut prev = 0;
    for c in cuts.into_iter().chain(std::iter::once(total)) {
        out.push(c - prev);
        prev = c;
    }
    out
}

/// (input, target) of `tokens` (without end-of-sentence) corrupted with `density` and
/// `mean_span`, sentinel `i` being `sentinels[i]`. A sequence of fewer than 2 tokens, or
/// one needing more spans than there are sentinels, keeps what fits: its spans are
/// capped at the sentinels' count.
pub fn corrupt(
    tokens: &[u32],
    density: f64,
    mean_span: f64,
    sentinels: &[u32],
    eos: u32,
    rng: &mut Rng,
) -> (Vec<u32>, Vec<u32>) {
    let n = tokens.len();
    if n < 2 || sentinels.is_empty() {
        // Nothing can be hidden with something kept: the target is the sequence.
        let mut src = tokens.to_vec();
        src.push(eos);
        return (vec![eos], src);
    }
    let noise = ((n as f64 * density).round() as usize).clamp(1, n - 1);
    let spans = ((noise as f64 / mean_span).round() as usize)
        .max(1)
        .min(sentinels.len())
        .min(noise)
        .min(n - noise);
    let noise_lens = random_composition(noise, spans, rng);
    let keep_lens = random_composition(n - noise, spans, rng);
    let mut src = Vec::with_capacity(n - noise + spans + 1);
    let mut tgt = Vec::with_capacity(noise + spans + 1);
    let mut at = 0;
    for (i, (&k, &z)) in keep_lens.iter().zip(&noise_lens).enumerate() {
        src.extend_from_slice(&tokens[at..at + k]);
        at += k;
        src.push(sentinels[i]);
        tgt.push(sentinels[i]);
        tgt.extend_from_slice(&tokens[at..at + z]);
        at += z;
    }
    src.push(eos);
    tgt.push(eos);
    (src, tgt)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Puts the hidden spans back: the input with each sentinel replaced by the target's
    /// tokens after that sentinel.
    fn restore(src: &[u32], tgt: &[u32], sentinels: &[u32], eos: u32) -> Vec<u32> {
        let mut out = vec![];
        for &t in &src[..src.len() - 1] {
            match sentinels.iter().position(|&s| s == t) {
                Some(_) => {
                    let at = tgt.iter().position(|&x| x == t).unwrap();
                    out.extend(
                        tgt[at + 1..]
                            .iter()
                            .take_while(|&&x| x != eos && !sentinels.contains(&x)),
                    );
                }
                None => out.push(t),
            }
        }
        out
    }

    #[test]
    fn spans_hide_the_planned_counts_and_restore_the_text() {
        let sentinels: Vec<u32> = (1000..1100).collect();
        let mut rng = Rng::new(3);
        let mut span_total = 0;
        let mut spans_seen = 0;
        for n in [2usize, 3, 7, 20, 57, 200, 512] {
            for _ in 0..50 {
                let toks: Vec<u32> = (0..n as u32).collect();
                let (src, tgt) = corrupt(&toks, 0.15, 3.0, &sentinels, 9999, &mut rng);
                let noise = ((n as f64 * 0.15).round() as usize).clamp(1, n - 1);
                let spans = src.iter().filter(|t| sentinels.contains(t)).count();
                assert_eq!(src.len(), n - noise + spans + 1, "n {n}");
                assert_eq!(tgt.len(), noise + spans + 1, "n {n}");
                let want = ((noise as f64 / 3.0).round() as usize)
                    .max(1)
                    .min(n - noise);
                assert_eq!(spans, want.min(noise), "n {n}");
                assert_eq!(restore(&src, &tgt, &sentinels, 9999), toks);
                // Sentinels in order, the input starting with a kept token.
                let used: Vec<u32> = tgt
                    .iter()
                    .copied()
                    .filter(|t| sentinels.contains(t))
                    .collect();
                assert_eq!(used, sentinels[..spans]);
                assert!(!sentinels.contains(&src[0]));
                span_total += noise;
                spans_seen += spans;
            }
        }
        let mean = span_total as f64 / spans_seen as f64;
        assert!((2.5..3.6).contains(&mean), "mean span {mean}");
    }

    #[test]
    fn compositions_cover_every_split() {
        let mut rng = Rng::new(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let c = random_composition(5, 3, &mut rng);
            assert_eq!(c.iter().sum::<usize>(), 5);
            assert!(c.iter().all(|&x| x >= 1));
            seen.insert(c);
        }
        // C(4, 2) = 6 compositions of 5 into 3 positive parts.
        assert_eq!(seen.len(), 6);
    }

    #[test]
    fn too_short_or_no_sentinels_keeps_the_text_as_target() {
        let mut rng = Rng::new(1);
        assert_eq!(
            corrupt(&[5], 0.15, 3.0, &[100], 9, &mut rng),
            (vec![9], vec![5, 9])
        );
        assert_eq!(
            corrupt(&[5, 6], 0.15, 3.0, &[], 9, &mut rng),
            (vec![9], vec![5, 6, 9])
        );
    }
}
