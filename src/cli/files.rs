//! The CLI's own files: the export it writes (to stdout, or to a new 0600 file renamed
//! into place when complete) and the import file it names, with a progress display.
//!
//! What goes into the export and how an import reaches the database is the admin
//! backend's (`Backend::export`, `Backend::import` in `crate::admin`), the same whether
//! the CLI opened the database itself or talks to the running server; this file only
//! moves bytes between that backend and the operator's files.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::args::{ExportArgs, ImportArgs};
use super::{CliError, Output, connect, emit};
use crate::admin::backup::Phase;
use crate::admin::ops::ExportRequest;
use crate::admin::{ImportProgress, print};
use crate::config::Config;
use crate::store::private::create_new;

/// `export`: the backend's export, copied to stdout or to `--out`; the counts of its
/// end line go to stderr.
pub(super) fn export(config: &Config, out: Output, args: &ExportArgs) -> Result<(), CliError> {
    let backend = connect(config, out, false)?;
    let mut sink = Sink::open(args.out.as_deref())?;
    let bar = progress("{spinner} exporting: {pos} lines [{elapsed}]");
    let mut stream = None;
    let result = (|| -> Result<(), CliError> {
        let stream = stream.insert(backend.export(ExportRequest {
            sessions: args.sessions,
        })?);
        while let Some(chunk) = stream.next_chunk()? {
            sink.write(&chunk)?;
            bar.set_position(stream.lines());
        }
        Ok(())
    })();
    bar.finish_and_clear();
    let counts = match (&result, stream.as_ref().and_then(|s| s.end())) {
        (Ok(()), Some(counts)) => counts,
        (Ok(()), None) => {
            sink.finish(false)?;
            return Err(CliError::Other(
                "the export was cut short (see the server's log); no file was written".into(),
            ));
        }
        (Err(_), _) => {
            sink.finish(false)?;
            return result;
        }
    };
    drop(stream);
    sink.finish(true)?;
    backend.close()?;
    if out.json {
        eprint!("{}", print::json(&counts));
    } else {
        eprint!("{}", print::counts("exported", &counts));
    }
    Ok(())
}

/// `import FILE`: the file is checked to be readable before the database is opened (an
/// import creates a missing database), then handed to the backend.
pub(super) fn import(config: &Config, out: Output, args: &ImportArgs) -> Result<(), CliError> {
    std::fs::File::open(&args.file)
        .map_err(|e| CliError::Other(format!("cannot read {}: {e}", args.file.display())))?;
    let backend = connect(config, out, true)?;
    let bar = progress("{spinner} {msg}: {pos} lines [{elapsed}]");
    let sending =
        ProgressStyle::with_template("{spinner} sending: {bytes}/{total_bytes} [{elapsed}]");
    let report = |step: ImportProgress| match step {
        ImportProgress::Sent { bytes, total } => {
            if bar.length() != Some(total) {
                if let Ok(style) = &sending {
                    bar.set_style(style.clone());
                }
                bar.set_length(total);
            }
            bar.set_position(bytes);
        }
        ImportProgress::Lines(phase, lines) => {
            bar.set_message(match phase {
                Phase::Validating => "validating",
                Phase::Writing => "writing",
            });
            bar.set_position(lines);
        }
    };
    let result = backend.import(&args.file, args.merge, &report);
    bar.finish_and_clear();
    let counts = result?;
    backend.close()?;
    if out.json {
        emit(&print::json(&counts))
    } else {
        emit(&print::counts("imported", &counts))
    }
}

/// A progress display on stderr when it is a terminal; hidden otherwise.
fn progress(template: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// Where an export goes: stdout, or a 0600 file written under a temporary name and
/// renamed when complete, so a failed export never leaves a file that looks whole.
enum Sink {
    Stdout(std::io::StdoutLock<'static>),
    File {
        file: std::io::BufWriter<std::fs::File>,
        partial: PathBuf,
        path: PathBuf,
    },
}

impl Sink {
    fn open(out: Option<&Path>) -> Result<Sink, CliError> {
        let Some(path) = out else {
            return Ok(Sink::Stdout(std::io::stdout().lock()));
        };
        let mut name = path.as_os_str().to_owned();
        name.push(".partial");
        let partial = PathBuf::from(name);
        let file = create_new(&partial).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                CliError::Other(format!(
                    "{} already exists (left by an earlier export, or put there by someone \
                     else); check it and remove it, then export again",
                    partial.display()
                ))
            } else {
                CliError::Other(format!("cannot create {}: {e}", partial.display()))
            }
        })?;
        Ok(Sink::File {
            file: std::io::BufWriter::new(file),
            partial,
            path: path.to_path_buf(),
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), CliError> {
        let result = match self {
            Sink::Stdout(out) => out.write_all(bytes),
            Sink::File { file, .. } => file.write_all(bytes),
        };
        result.map_err(|e| CliError::Other(format!("cannot write the export: {e}")))
    }

    fn finish(self, ok: bool) -> Result<(), CliError> {
        match self {
            Sink::Stdout(mut out) => out
                .flush()
                .map_err(|e| CliError::Other(format!("cannot write the export: {e}"))),
            Sink::File {
                file,
                partial,
                path,
            } => {
                if !ok {
                    let _ = std::fs::remove_file(&partial);
                    return Ok(());
                }
                let file = file
                    .into_inner()
                    .map_err(|e| CliError::Other(format!("cannot write the export: {e}")))?;
                file.sync_all()
                    .map_err(|e| CliError::Other(format!("cannot write the export: {e}")))?;
                std::fs::rename(&partial, &path).map_err(|e| {
                    CliError::Other(format!(
                        "cannot rename the export to {}: {e}",
                        path.display()
                    ))
                })
            }
        }
    }
}
