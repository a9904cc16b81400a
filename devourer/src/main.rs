//! The `devourer` binary: parses the command line, sets up logging on stderr and runs a command.

use std::{io::IsTerminal, process::ExitCode};

use devourer::config::{Command, ConfigCommand, file::ConfigError};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match devourer::config::file::parse(std::env::args_os().collect()) {
        Ok((cli, _)) => cli,
        // --help, --version and usage errors, formatted by clap.
        Err(ConfigError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("devourer: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_from_env("DEVOURER_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let res = match cli.command {
        Command::Capture(args) => devourer::drivers::live::run(*args).map(|()| ExitCode::SUCCESS),
        Command::Read(args) => devourer::drivers::replay::run(*args),
        Command::Config(ConfigCommand::Check {
            file,
            for_command,
            args,
        }) => match devourer::config::file::check(&file, &for_command, &args) {
            Ok(text) => {
                print!("{text}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(anyhow::anyhow!("{}: {e}", file.display())),
        },
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
