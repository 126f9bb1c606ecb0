//! `phalanx link-certs`: a CA and a certificate per backend and front, keys private,
//! nothing ever written over, bad names refused.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use phalanx_link::tls::LinkIdentity;

fn link_certs(args: &[&str]) -> (Option<i32>, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_phalanx"))
        .arg("link-certs")
        .args(args)
        .output()
        .expect("phalanx runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap()
}

fn mode(dir: &Path, file: &str) -> u32 {
    std::fs::metadata(dir.join(file))
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn makes_a_ca_and_a_usable_identity_for_every_process() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("link");
    let out_arg = out.to_str().unwrap();
    let (status, stdout, stderr) = link_certs(&[
        "--out",
        out_arg,
        "--cluster",
        "pay",
        "--backends",
        "b1,b2",
        "--fronts",
        "f1",
    ]);
    assert_eq!(status, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("keep ca.key offline"), "{stdout}");
    let mut files = std::fs::read_dir(&out)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect::<Vec<_>>();
    files.sort();
    assert_eq!(
        files,
        [
            "b1.crt", "b1.key", "b2.crt", "b2.key", "ca.crt", "ca.key", "f1.crt", "f1.key"
        ]
    );
    for key in ["ca.key", "b1.key", "b2.key", "f1.key"] {
        assert_eq!(mode(&out, key), 0o600, "{key}");
    }
    let ca = read(&out, "ca.crt");
    for name in ["b1", "b2", "f1"] {
        let identity = LinkIdentity::from_pem(
            &read(&out, &format!("{name}.crt")),
            &read(&out, &format!("{name}.key")),
            &ca,
        )
        .unwrap();
        identity.server_config().unwrap();
        identity.client_config().unwrap();
    }
    // No key in what it prints.
    let key_line = read(&out, "f1.key").lines().nth(1).unwrap().to_owned();
    assert!(!stdout.contains(&key_line) && !stderr.contains(&key_line));

    // A second run never writes over them.
    let before = read(&out, "b1.key");
    let (status, _, stderr) = link_certs(&["--out", out_arg]);
    assert_eq!(status, Some(2), "{stderr}");
    assert!(stderr.contains("not empty"), "{stderr}");
    assert_eq!(read(&out, "b1.key"), before);
}

#[test]
fn bad_or_repeated_names_are_refused_and_write_nothing() {
    let root = tempfile::tempdir().unwrap();
    for (backends, fronts, expected) in [
        ("b1", "b1", "named twice"),
        ("../b1", "f1", "not a usable name"),
        ("ca", "f1", "not a usable name"),
        ("b1", "", "not a usable name"),
    ] {
        let out = root.path().join("link");
        let (status, _, stderr) = link_certs(&[
            "--out",
            out.to_str().unwrap(),
            "--backends",
            backends,
            "--fronts",
            fronts,
        ]);
        assert_eq!(status, Some(2), "{backends} {fronts}: {stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!out.exists(), "nothing written for {backends} {fronts}");
    }
}
