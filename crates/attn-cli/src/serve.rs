//! `attn serve ...`: runs the `attn-serve` binary (crate `attn-serve`) with the same
//! arguments, so that this binary and the library carry no async runtime.

use std::ffi::OsString;
use std::path::PathBuf;

use attn::{Error, Result};
use clap::Args;

#[derive(Args)]
#[command(disable_help_flag = true)]
pub struct ServeArgs {
    /// Arguments for attn-serve (see `attn serve --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

/// `attn-serve` beside this executable, else on the PATH.
fn find() -> Option<PathBuf> {
    let name = format!("attn-serve{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe().ok()?.parent()?.join(&name);
    if beside.is_file() {
        return Some(beside);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(&name))
        .find(|p| p.is_file())
}

pub fn run(a: ServeArgs) -> Result<()> {
    let bin = find().ok_or_else(|| {
        Error::invalid(
            "serve",
            "needs the attn-serve binary beside attn or on the PATH: cargo build --release -p attn-serve",
        )
    })?;
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(&a.args);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let e = cmd.exec();
        Err(Error::io(bin, e))
    }
    #[cfg(not(unix))]
    {
        let status = cmd.status().map_err(|e| Error::io(&bin, e))?;
        std::process::exit(status.code().unwrap_or(1));
    }
}
