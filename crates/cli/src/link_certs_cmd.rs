//! `phalanx link-certs`: the link's certificate authority and a certificate for every
//! backend and front of a cluster, as new files (keys mode 0600, never over a file).
//!
//! Exit status: 0 written; 1 a file could not be written; 2 bad input (a bad or repeated
//! name, an output directory that is not empty).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use phalanx_link::Role;
use phalanx_link::pki::LinkCa;
use phalanx_secrets::write_new_private_file;

/// Exit status: bad input.
const EXIT_INPUT: u8 = 2;

/// `phalanx link-certs`.
#[derive(Args, Debug)]
pub struct LinkCertsArgs {
    /// A new or empty directory for the files.
    #[arg(long)]
    out: PathBuf,
    /// The cluster's name (in the CA's name).
    #[arg(long, default_value = "phalanx")]
    cluster: String,
    /// The backends' names (each gets NAME.crt and NAME.key).
    #[arg(long, value_delimiter = ',', default_value = "backend-1,backend-2")]
    backends: Vec<String>,
    /// The fronts' names.
    #[arg(long, value_delimiter = ',', default_value = "front-1,front-2")]
    fronts: Vec<String>,
}

/// Runs `phalanx link-certs`.
pub fn run(args: LinkCertsArgs) -> ExitCode {
    match write_all(&args) {
        Ok(written) => {
            println!(
                "wrote the link CA and {} certificates into {}: {}",
                args.backends.len() + args.fronts.len(),
                args.out.display(),
                written.join(", ")
            );
            println!(
                "give each process its NAME.crt, NAME.key and ca.crt; keep ca.key offline (only new certificates need it)"
            );
            ExitCode::SUCCESS
        }
        Err((message, input)) => {
            eprintln!("error: {message}");
            ExitCode::from(if input { EXIT_INPUT } else { 1 })
        }
    }
}

/// A name that is safe as a file name and in a certificate.
fn check_name(name: &str) -> Result<(), String> {
    let fine = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name != "ca"
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if fine {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a usable name: 1 to 64 letters, digits, '-', '_' or '.', not starting with '.', and not \"ca\""
        ))
    }
}

fn write_all(args: &LinkCertsArgs) -> Result<Vec<String>, (String, bool)> {
    let named = args
        .backends
        .iter()
        .map(|name| (Role::Backend, name))
        .chain(args.fronts.iter().map(|name| (Role::Front, name)));
    let mut names = Vec::new();
    for (role, name) in named {
        check_name(name).map_err(|message| (message, true))?;
        if names.iter().any(|(_, seen)| seen == name) {
            return Err((format!("{name:?} is named twice"), true));
        }
        names.push((role, name.clone()));
    }
    if args.backends.is_empty() {
        return Err(("at least one backend is needed".to_owned(), true));
    }
    prepare_directory(&args.out)?;

    let ca = LinkCa::generate(&args.cluster).map_err(|err| (err.to_string(), false))?;
    let write = |file: &str, bytes: &[u8], private: bool| {
        let path = args.out.join(file);
        let written = if private {
            write_new_private_file(&path, bytes).map_err(|err| err.to_string())
        } else {
            write_new_public_file(&path, bytes)
        };
        written
            .map_err(|err| (err, false))
            .map(|()| file.to_owned())
    };
    let mut written = vec![
        write("ca.crt", ca.cert_pem().as_bytes(), false)?,
        write("ca.key", ca.key_pem().as_bytes(), true)?,
    ];
    for (role, name) in names {
        let issued = ca
            .issue(role, &name)
            .map_err(|err| (err.to_string(), false))?;
        written.push(write(
            &format!("{name}.crt"),
            issued.cert_pem.as_bytes(),
            false,
        )?);
        written.push(write(
            &format!("{name}.key"),
            issued.key_pem.as_bytes(),
            true,
        )?);
    }
    Ok(written)
}

/// Creates `dir`, or checks that it is empty: certificates are never written over.
fn prepare_directory(dir: &Path) -> Result<(), (String, bool)> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err((
                    format!(
                        "{} is not empty: link certificates go into a new directory, never over others",
                        dir.display()
                    ),
                    true,
                ));
            }
            Ok(())
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dir)
            .map_err(|err| (format!("cannot create {}: {err}", dir.display()), false)),
        Err(err) => Err((format!("cannot read {}: {err}", dir.display()), false)),
    }
}

/// A new file (never over one), made durable.
fn write_new_public_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|err| format!("{}: {err}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|err| format!("{}: {err}", path.display()))
}
