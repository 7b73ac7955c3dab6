use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = convoy::cli::Cli::parse();
    let code = convoy::commands::run(
        &cli,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    ExitCode::from(code)
}
