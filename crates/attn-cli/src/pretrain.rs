//! `attn pretrain`: T5's span-corruption pre-training on documents (one per line), with
//! the sequence-to-sequence trainer (`attn translate train`'s: checkpoints, resume,
//! metrics.jsonl); the validation loss chooses the saved model. The folder it writes is
//! what `attn summarize train --model` (or `attn translate train --model`) fine-tunes.

use crate::translate::{run_train, Task, TrainArgs};
use attn::Result;

pub fn run(a: TrainArgs) -> Result<()> {
    run_train(a, Task::Pretrain)
}
