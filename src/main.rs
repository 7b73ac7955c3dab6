use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = convoy::cli::Cli::parse();
    convoy::logging::init(cli.log_format);
    // Unlocked handles: a long-running daemon has other threads that print too.
    let code = convoy::commands::run(&cli, &mut std::io::stdout(), &mut std::io::stderr());
    ExitCode::from(code)
}
