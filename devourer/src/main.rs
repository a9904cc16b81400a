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
        // The Kafka client logs each connection it opens, and each of its own retries; the
        // sink and the trigger say when a request failed for good.
        .unwrap_or_else(|_| EnvFilter::new("info,rskafka=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    devourer::base::tls::install_default_provider();
    let res = match cli.command {
        Command::Capture(args) => devourer::drivers::live::run(*args).map(|()| ExitCode::SUCCESS),
        Command::Read(args) => devourer::drivers::replay::run(*args),
        Command::CompileFilter => Ok(compile_filter()),
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

/// `devourer compile-filter`: the filter on stdin compiles (exit 0), or why not (on stdout).
#[cfg(feature = "capture-requests")]
fn compile_filter() -> ExitCode {
    use std::io::Read;
    let mut text = String::new();
    let limit = devourer::ondemand::sniff::COMPILE_INPUT_MAX as u64;
    if let Err(e) = std::io::stdin().take(limit).read_to_string(&mut text) {
        println!("reading the filter: {e}");
        return ExitCode::FAILURE;
    }
    match devourer::ondemand::sniff::check_filter(&text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(feature = "capture-requests"))]
fn compile_filter() -> ExitCode {
    println!("this build has no libpcap (built without the capture-requests feature)");
    ExitCode::FAILURE
}
