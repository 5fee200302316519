//! The one training loop every task runs (language modelling, classification,
//! translation). A task says what a batch is, what its loss and evaluation are, how the
//! learning rate moves and how its model is saved; this loop does the rest the same
//! way for all of them: gradient accumulation, clipping to a global norm, the AdamW
//! update, a refusal of a loss that stops being finite, progress events, the log
//! (`metrics.jsonl`), evaluation at an interval, the best model kept by the task's
//! score, and a checkpoint at every evaluation that a killed run resumes from exactly
//! (model, AdamW moments, RNG, batch order, step).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::optimizer::AdamWConfig;
use super::run;
use crate::checkpoint::{read_json, write_json};
use crate::engine::io::{read_plain, write_plain, Plain};
use crate::rng::Rng;
use crate::{Error, Result};

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// A model the loop can update: gradients to clear and measure, the AdamW step, and
/// the moments a checkpoint keeps.
pub trait Trainable {
    fn zero_grads(&mut self);
    /// √Σ g² over the trainable gradients.
    fn grad_norm(&self) -> f64;
    /// One AdamW update with the gradients times `grad_scale`.
    fn adamw_step(&mut self, config: &AdamWConfig, lr: f64, grad_scale: f64);
    /// The AdamW moments by name, for a checkpoint.
    fn moments(&self) -> Plain;
    /// Restore what [`Trainable::moments`] gave, after `t` updates.
    fn load_moments(&mut self, moments: Plain, t: usize) -> Result<()>;
    /// The number of values trained.
    fn trainable_count(&self) -> usize;
}

/// What a task tells the loop.
pub trait Job {
    type Model: Trainable;
    /// An evaluation's record (one line of `metrics.jsonl`).
    type Eval: Serialize;
    fn model(&mut self) -> &mut Self::Model;
    /// The learning rate of (0-based) step `step`.
    fn lr(&self, step: usize) -> f64;
    /// Draw one micro-batch, add its gradients (the mean over its examples or tokens),
    /// and return its loss and how many tokens it held.
    fn micro_batch(&mut self, rng: &mut Rng) -> Result<(f64, usize)>;
    /// Evaluate the model after `step` steps (`train_loss`: the mean training loss
    /// since the last evaluation, NaN when none).
    fn evaluate(&mut self, step: usize, train_loss: f64) -> Result<Self::Eval>;
    /// The number to maximise when choosing the best model (`None`: no held-out score,
    /// every evaluation saves), and where the evaluation records whether it was best.
    fn score(eval: &Self::Eval) -> Option<f64>;
    fn mark_best(eval: &mut Self::Eval, best: bool);
    /// Write the model (as a user loads it) into `dir`; `resumable` when it goes into
    /// a checkpoint (and must hold what training goes on from, such as separate
    /// adapters).
    fn save_model(&mut self, dir: &Path, resumable: bool) -> Result<()>;
    /// What the task needs besides the model to resume (its config, data description,
    /// batch order), kept in the checkpoint.
    fn state(&self) -> serde_json::Value;
}

/// How a task's training starts.
pub enum Begin<'a> {
    /// A new run; `data` describes the data for a later resume.
    New { data: &'a serde_json::Value },
    /// Continue the run in `out/checkpoint` (the same data, read again by the caller).
    Resume,
}

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub max_steps: usize,
    /// Evaluate, save the best model and checkpoint every this many steps (and at the
    /// last).
    pub eval_every: usize,
    /// Log a training line every this many steps (and at the last); 0: never.
    pub log_every: usize,
    /// Also evaluate before the first step of a new run.
    pub eval_at_start: bool,
    /// Micro-batches per update.
    pub accum: usize,
    /// Clip the gradients' global norm to this (0: no clipping).
    pub clip: f64,
    pub adamw: AdamWConfig,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepStats {
    pub step: usize,
    /// The steps the run will make.
    #[serde(skip)]
    pub total: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_sec: f64,
}

pub enum Event<'a, E> {
    Step(&'a StepStats),
    Eval(&'a E),
}

/// Where a run stands: what a checkpoint holds besides the model, moments and the
/// task's own state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    pub step: usize,
    pub rng_state: u64,
    /// The best score so far and the step it was reached at.
    pub best: Option<f64>,
    pub best_step: usize,
    /// Seconds spent in training steps (evaluation and saving excluded).
    pub train_seconds: f64,
    /// Training loss since the last evaluation: sum and count.
    #[serde(default)]
    pub loss_sum: f64,
    #[serde(default)]
    pub loss_n: usize,
}

impl Progress {
    pub fn new(rng: &Rng) -> Self {
        Progress {
            step: 0,
            rng_state: rng.state(),
            best: None,
            best_step: 0,
            train_seconds: 0.0,
            loss_sum: 0.0,
            loss_n: 0,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Saved {
    #[serde(flatten)]
    progress: Progress,
    task: serde_json::Value,
}

/// The checkpoint folder of the run in `out` and its saved state.
fn read_saved(out: &Path, written_by: &str) -> Result<(PathBuf, Saved)> {
    let ckpt = run::require_checkpoint(out, written_by)?;
    let path = ckpt.join(STATE_FILE);
    let saved = serde_json::from_value(read_json(&path)?)
        .map_err(|e| Error::bad_file(&path, format!("not a valid training state: {e}")))?;
    Ok((ckpt, saved))
}

/// A run: the loop's state and the folder it writes.
pub struct Run {
    pub progress: Progress,
    pub rng: Rng,
    pub out: PathBuf,
    pub plan: Plan,
    /// Held while the run writes `out` (none for benchmarks).
    _lock: Option<crate::guard::DirLock>,
    /// The last step's training loss (NaN before the first).
    pub last_loss: f64,
}

impl Run {
    /// A new run writing `out` (locked; a previous run's log is removed).
    pub fn start(out: &Path, plan: Plan, rng: Rng) -> Result<Self> {
        let lock = run::lock(out)?;
        let log = out.join(run::METRICS_FILE);
        if log.is_file() && !log.is_symlink() {
            std::fs::remove_file(&log).map_err(|e| Error::io(&log, e))?;
        }
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        Ok(Run {
            progress: Progress::new(&rng),
            rng,
            out: out.to_path_buf(),
            plan,
            _lock: Some(lock),
            last_loss: f64::NAN,
        })
    }

    /// A run that writes nothing unless asked (benchmarks).
    pub fn detached(plan: Plan, rng: Rng) -> Self {
        Run {
            progress: Progress::new(&rng),
            rng,
            out: std::env::temp_dir().join("attn-detached-run"),
            plan,
            _lock: None,
            last_loss: f64::NAN,
        }
    }

    /// Lock `out` and read its checkpoint: the folder (to load the model from), the
    /// task's saved state, and a run that continues from it once
    /// [`Run::restore`] has put the moments back. `written_by` names the command
    /// for the error when there is no checkpoint.
    pub fn reopen(
        out: &Path,
        written_by: &str,
    ) -> Result<(PathBuf, serde_json::Value, ReopenedRun)> {
        let lock = run::lock(out)?;
        let (ckpt, saved) = read_saved(out, written_by)?;
        Ok((
            ckpt,
            saved.task,
            ReopenedRun {
                progress: saved.progress,
                out: out.to_path_buf(),
                lock,
            },
        ))
    }

    /// The task's saved state in `out/checkpoint`, without locking (to rebuild a
    /// resumed run's arguments first).
    pub fn saved_task(out: &Path, written_by: &str) -> Result<serde_json::Value> {
        Ok(read_saved(out, written_by)?.1.task)
    }

    /// Train until the plan's last step.
    pub fn fit<J: Job>(
        &mut self,
        job: &mut J,
        on_event: &mut dyn FnMut(Event<J::Eval>),
    ) -> Result<()> {
        if self.progress.step == 0 && self.plan.eval_at_start {
            let e = self.evaluate(job)?;
            on_event(Event::Eval(&e));
        }
        while self.progress.step < self.plan.max_steps {
            let s = self.step(job)?;
            let last = s.step == self.plan.max_steps;
            if self.plan.log_every > 0 && (s.step % self.plan.log_every == 0 || last) {
                let mut line = serde_json::to_value(&s).unwrap();
                line["type"] = "train".into();
                run::append_metrics(&self.out, &line)?;
            }
            on_event(Event::Step(&s));
            if s.step % self.plan.eval_every == 0 || last {
                let e = self.evaluate(job)?;
                on_event(Event::Eval(&e));
            }
        }
        Ok(())
    }

    /// One update: `accum` micro-batches, clipping, AdamW at the schedule's rate.
    pub fn step<J: Job>(&mut self, job: &mut J) -> Result<StepStats> {
        let started = Instant::now();
        let p = &self.plan;
        let lr = job.lr(self.progress.step);
        job.model().zero_grads();
        let (mut loss, mut tokens) = (0.0, 0);
        for _ in 0..p.accum {
            let (l, t) = job.micro_batch(&mut self.rng)?;
            loss += l;
            tokens += t;
        }
        let accum = p.accum as f64;
        let loss = loss / accum;
        let step = self.progress.step + 1;
        if !loss.is_finite() {
            return Err(Error::invalid(
                "training",
                format!("the loss became {loss} at step {step}; lower --lr or check the data"),
            ));
        }
        // The micro-batches' gradients are summed: the update uses their mean.
        let norm = job.model().grad_norm() / accum;
        let clip = if p.clip > 0.0 && norm > p.clip {
            p.clip / (norm + 1e-6)
        } else {
            1.0
        };
        job.model().adamw_step(&p.adamw, lr, clip / accum);
        self.progress.step = step;
        let seconds = started.elapsed().as_secs_f64();
        self.progress.train_seconds += seconds;
        self.progress.loss_sum += loss;
        self.progress.loss_n += 1;
        self.last_loss = loss;
        Ok(StepStats {
            step,
            total: p.max_steps,
            loss,
            lr,
            grad_norm: norm,
            tokens_per_sec: tokens as f64 / seconds,
        })
    }

    /// Evaluate; save the model when it is the best so far; log the evaluation, then
    /// write the checkpoint.
    pub fn evaluate<J: Job>(&mut self, job: &mut J) -> Result<J::Eval> {
        let pr = &mut self.progress;
        let train_loss = if pr.loss_n > 0 {
            pr.loss_sum / pr.loss_n as f64
        } else {
            f64::NAN
        };
        let mut e = job.evaluate(pr.step, train_loss)?;
        (pr.loss_sum, pr.loss_n) = (0.0, 0);
        let best = match (J::score(&e), pr.best) {
            (Some(s), Some(b)) => s > b,
            _ => true,
        };
        J::mark_best(&mut e, best);
        if best {
            if let Some(s) = J::score(&e) {
                pr.best = Some(s);
            }
            pr.best_step = pr.step;
            job.save_model(&self.out, false)?;
        }
        // The line first, then the checkpoint: a run killed in between resumes from
        // the previous checkpoint, which cuts this line away ([`run::cut_metrics`]).
        let mut line = serde_json::to_value(&e).unwrap();
        line["type"] = "eval".into();
        line["step"] = self.progress.step.into();
        run::append_metrics(&self.out, &line)?;
        self.checkpoint(job)?;
        Ok(e)
    }

    /// Write the complete training state to `out/checkpoint`, atomically as a folder.
    pub fn checkpoint<J: Job>(&mut self, job: &mut J) -> Result<()> {
        self.progress.rng_state = self.rng.state();
        let saved = Saved {
            progress: self.progress.clone(),
            task: job.state(),
        };
        run::write_checkpoint(&self.out, |tmp| {
            job.save_model(tmp, true)?;
            write_plain(&tmp.join(OPTIMIZER_FILE), &job.model().moments())?;
            write_json(
                &tmp.join(STATE_FILE),
                &serde_json::to_value(&saved).unwrap(),
            )
        })
    }
}

/// A run read back from its checkpoint, waiting for its model's moments.
pub struct ReopenedRun {
    pub progress: Progress,
    out: PathBuf,
    lock: crate::guard::DirLock,
}

impl ReopenedRun {
    /// Put the checkpoint's moments into `model` and continue with `plan`; the log is
    /// cut back to the checkpoint's step.
    pub fn restore(self, ckpt: &Path, model: &mut impl Trainable, plan: Plan) -> Result<Run> {
        let moments = read_plain(&ckpt.join(OPTIMIZER_FILE))?;
        model.load_moments(moments, self.progress.step)?;
        run::cut_metrics(&self.out, self.progress.step)?;
        Ok(Run {
            rng: Rng::from_state(self.progress.rng_state),
            progress: self.progress,
            out: self.out,
            plan,
            _lock: Some(self.lock),
            last_loss: f64::NAN,
        })
    }
}

/// What a task over examples (classification, translation) keeps in its checkpoint
/// besides the model and moments: its config, the data's size and label set (to refuse
/// other data on resume), the batch order, and the caller's description of the data
/// (the CLI keeps its arguments there).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExamplesState<C> {
    pub config: C,
    pub n_train: usize,
    pub n_val: usize,
    #[serde(default)]
    pub labels: Vec<String>,
    pub passes: Passes,
    pub data: serde_json::Value,
}

impl<C: Serialize + serde::de::DeserializeOwned> ExamplesState<C> {
    /// The state of the run in `out/checkpoint`, unlocked (for a caller rebuilding the
    /// run's arguments).
    pub fn saved(out: &Path, written_by: &str) -> Result<Self> {
        serde_json::from_value(Run::saved_task(out, written_by)?)
            .map_err(|e| Error::bad_file(out, format!("not a run of {written_by}: {e}")))
    }

    /// Lock `out` and read its checkpoint's state, refusing data of another size or
    /// label set than the run started with.
    pub fn reopen(
        out: &Path,
        written_by: &str,
        n_train: usize,
        n_val: usize,
        labels: &[String],
    ) -> Result<(PathBuf, Self, ReopenedRun)> {
        let (ckpt, task, reopened) = Run::reopen(out, written_by)?;
        let st: Self = serde_json::from_value(task)
            .map_err(|e| Error::bad_file(&ckpt, format!("not a run of {written_by}: {e}")))?;
        if (st.n_train, st.n_val, st.labels.as_slice()) != (n_train, n_val, labels) {
            return Err(Error::invalid(
                "data",
                format!(
                    "{n_train} training and {n_val} validation examples now, but the run started with {} and {}{}: resume with the same data",
                    st.n_train,
                    st.n_val,
                    if st.labels.is_empty() { String::new() } else { format!(" (labels {})", st.labels.join(", ")) }
                ),
            ));
        }
        Ok((ckpt, st, reopened))
    }
}

/// Batches of example indices for passes over a dataset, grouped by length
/// ([`crate::tasks::length_batches`]), drawn one at a time; the batches left in the
/// current pass are part of a checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Passes {
    /// The batches left in the current pass, the next one last.
    pub left: Vec<Vec<usize>>,
}

impl Passes {
    /// The next batch (a new pass, shuffled with `rng`, when the last one is used up).
    pub fn next(&mut self, lengths: &[usize], batch: usize, rng: &mut Rng) -> Vec<usize> {
        if self.left.is_empty() {
            self.left = crate::tasks::length_batches(lengths, batch, rng);
            self.left.reverse();
        }
        self.left.pop().unwrap_or_default()
    }
}
