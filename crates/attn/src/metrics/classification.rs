//! Classification metrics with scikit-learn's definitions (`classification_report` and
//! `confusion_matrix` with `zero_division=0`): labels are the sorted union of gold and
//! predicted labels; a ratio with a zero denominator is 0.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfusionMatrix {
    pub labels: Vec<String>,
    /// Rows are gold labels, columns predicted labels.
    pub matrix: Vec<Vec<usize>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassificationReport {
    pub accuracy: f64,
    pub macro_avg: Prf,
    pub micro: Prf,
    pub weighted: Prf,
    pub per_class: BTreeMap<String, ClassScores>,
    pub confusion_matrix: ConfusionMatrix,
}

impl ClassificationReport {
    /// The JSON shape of `attn eval classify --json` (`"macro"` is a Rust keyword).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("report serialises");
        let o = v.as_object_mut().unwrap();
        let m = o.remove("macro_avg").unwrap();
        o.insert("macro".into(), m);
        v
    }
}

fn ratio(num: f64, den: f64) -> f64 {
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

fn f1(p: f64, r: f64) -> f64 {
    ratio(2.0 * p * r, p + r)
}

/// Score predictions against gold labels (same length, at least one item).
pub fn classification_report(gold: &[String], pred: &[String]) -> Result<ClassificationReport> {
    if gold.len() != pred.len() {
        return Err(Error::invalid(
            "predictions",
            format!(
                "{} predictions for {} gold labels: the files must have the same number of lines",
                pred.len(),
                gold.len()
            ),
        ));
    }
    if gold.is_empty() {
        return Err(Error::invalid("gold", "no labels to score"));
    }
    let mut labels: Vec<String> = gold.iter().chain(pred).cloned().collect();
    labels.sort();
    labels.dedup();
    let index: BTreeMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let k = labels.len();
    let mut matrix = vec![vec![0usize; k]; k];
    for (g, p) in gold.iter().zip(pred) {
        matrix[index[g.as_str()]][index[p.as_str()]] += 1;
    }
    let n = gold.len() as f64;
    let mut per_class = BTreeMap::new();
    let (mut tp_sum, mut macro_p, mut macro_r, mut macro_f) = (0.0, 0.0, 0.0, 0.0);
    let (mut w_p, mut w_r, mut w_f) = (0.0, 0.0, 0.0);
    for (i, label) in labels.iter().enumerate() {
        let tp = matrix[i][i] as f64;
        let support = matrix[i].iter().sum::<usize>();
        let predicted = (0..k).map(|r| matrix[r][i]).sum::<usize>() as f64;
        let p = ratio(tp, predicted);
        let r = ratio(tp, support as f64);
        // As scikit-learn: 2tp / (2tp + fp + fn), which is 2pr/(p+r) without the rounding.
        let f = ratio(2.0 * tp, predicted + support as f64);
        tp_sum += tp;
        macro_p += p;
        macro_r += r;
        macro_f += f;
        w_p += p * support as f64;
        w_r += r * support as f64;
        w_f += f * support as f64;
        per_class.insert(
            label.clone(),
            ClassScores {
                precision: p,
                recall: r,
                f1: f,
                support,
            },
        );
    }
    let kf = k as f64;
    let micro_p = ratio(tp_sum, n);
    let micro_r = ratio(tp_sum, n);
    Ok(ClassificationReport {
        accuracy: tp_sum / n,
        macro_avg: Prf {
            precision: macro_p / kf,
            recall: macro_r / kf,
            f1: macro_f / kf,
        },
        micro: Prf {
            precision: micro_p,
            recall: micro_r,
            f1: f1(micro_p, micro_r),
        },
        weighted: Prf {
            precision: ratio(w_p, n),
            recall: ratio(w_r, n),
            f1: ratio(w_f, n),
        },
        per_class,
        confusion_matrix: ConfusionMatrix { labels, matrix },
    })
}
