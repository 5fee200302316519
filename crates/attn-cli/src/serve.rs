//! `attn serve ...`: the HTTP server of the `attn-serve` crate, run in this process with
//! the same arguments (so that one `cargo install` gives a working `attn serve`). The
//! async runtime lives in that crate; nothing else in this binary uses it.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Args;

#[derive(Args)]
#[command(disable_help_flag = true)]
pub struct ServeArgs {
    /// Arguments for the server (see `attn serve --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

pub fn run(a: ServeArgs) -> ExitCode {
    attn_serve::main_with_args(std::iter::once(OsString::from("attn serve")).chain(a.args))
}
