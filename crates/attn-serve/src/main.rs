//! `attn-serve --model DIR`: serve an attn model over HTTP (see README.md). The program
//! lives in the library ([`attn_serve::main_with_args`]) so that `attn serve` runs it too.

fn main() -> std::process::ExitCode {
    attn_serve::main_with_args(std::env::args_os())
}
