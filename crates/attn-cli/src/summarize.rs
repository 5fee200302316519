//! `attn summarize` (one document per line in, one summary per line out) and
//! `attn summarize train`: the sequence-to-sequence machinery of `attn translate`, with
//! ROUGE-L choosing the checkpoint and T5 as the default family.

use clap::{Args, Subcommand};

use crate::translate::{run_decode, run_train, RunArgs, Task, TrainArgs};
use attn::Result;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SummarizeCommand {
    #[command(subcommand)]
    sub: Option<SummarizeSub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum SummarizeSub {
    /// Train a summarizer on (document, summary) pairs: fine-tune a T5 or Marian folder
    /// (--model) or train a new model (T5 by default); validation ROUGE-L (Chinese
    /// scored by characters) chooses the saved model.
    Train(TrainArgs),
}

pub fn run(cmd: SummarizeCommand) -> Result<()> {
    match cmd.sub {
        Some(SummarizeSub::Train(a)) => run_train(a, Task::Summarize),
        None => run_decode(cmd.run, Task::Summarize),
    }
}
