//! TLS certificates of private setups against `KVSSINK_CA_CERT_PATH`: a self-signed certificate
//! made the common way (`openssl req -x509`, marked CA:TRUE) is accepted when that file holds
//! exactly it (a pin); a CA certificate that is not pinned, a certificate of another authority,
//! an expired pinned certificate and a pinned certificate for another host name are refused, each
//! with an error that names the rule.

mod common;
use common::pipeline;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kvs_local_endpoint::{Config, FragmentState, LocalEndpoint};
use pipeline::{Run, RunOptions, run};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

/// `(certificate PEM, key PEM)`.
type Identity = (String, String);

/// Like `openssl req -x509`: self-signed and CA:TRUE.
fn openssl_self_signed(dir: &Path) -> Identity {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cert = std::fs::read_to_string(cert).unwrap();
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text"])
        .stdin(std::fs::File::open(dir.join("cert.pem")).unwrap())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("CA:TRUE"),
        "openssl marks its self-signed certificates as CAs"
    );
    (cert, std::fs::read_to_string(key).unwrap())
}

fn rcgen_identity(names: &[&str], ca: bool, expired: bool) -> Identity {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    if ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn endpoint(identity: Identity) -> LocalEndpoint {
    LocalEndpoint::start(Config {
        tls: true,
        tls_identity: Some(identity),
        ..Config::default()
    })
    .expect("the local endpoint starts")
}

fn upload(ep: &LocalEndpoint, name: &str, ca_file: Option<&Path>) -> Run {
    let line = format!(
        "videotestsrc is-live=true num-buffers=30 ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! h264parse \
         ! kvssink name=sink stream-name={name} restart-on-error=false"
    );
    let extra_env = ca_file
        .map(|f| vec![("KVSSINK_CA_CERT_PATH", f.display().to_string())])
        .unwrap_or_default();
    run(
        ep,
        &line,
        Duration::from_secs(30),
        RunOptions {
            extra_env,
            ..RunOptions::default()
        },
    )
}

fn assert_refused(ep: &LocalEndpoint, name: &str, r: &Run, rule: &str) {
    assert!(
        r.errors
            .iter()
            .any(|e| e.contains("not trusted") && e.contains(rule)),
        "{name}: expected an error naming '{rule}': {:?}",
        r.errors
    );
    assert!(ep.fragments(name).is_empty(), "{name}: nothing may arrive");
}

/// The certificate `openssl req -x509` makes, named in KVSSINK_CA_CERT_PATH: accepted (the C++
/// element accepts it too).
#[test]
fn an_openssl_self_signed_certificate_is_accepted_as_a_pin() {
    let dir = tempfile::tempdir().unwrap();
    let ep = endpoint(openssl_self_signed(dir.path()));
    let name = "tls-openssl-pin";
    let r = upload(&ep, name, None);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.eos);
    let fragments = ep.fragments(name);
    assert_eq!(fragments.len(), 2);
    assert!(
        fragments
            .iter()
            .all(|f| f.state == FragmentState::Persisted)
    );
}

/// A CA certificate presented by the server but not the one in the file: refused as a CA used
/// as a server certificate.
#[test]
fn a_ca_certificate_that_is_not_pinned_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ep = endpoint(rcgen_identity(&["127.0.0.1", "localhost"], true, false));
    let other = dir.path().join("other.pem");
    std::fs::write(&other, openssl_self_signed(dir.path()).0).unwrap();
    let name = "tls-ca-not-pinned";
    let r = upload(&ep, name, Some(&other));
    assert_refused(&ep, name, &r, "exact pin");
}

/// A certificate of an authority the file does not hold.
#[test]
fn a_certificate_of_another_authority_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ep = endpoint(rcgen_identity(&["127.0.0.1", "localhost"], false, false));
    let other = dir.path().join("other.pem");
    std::fs::write(&other, openssl_self_signed(dir.path()).0).unwrap();
    let name = "tls-other-authority";
    let r = upload(&ep, name, Some(&other));
    assert_refused(&ep, name, &r, "not signed by a certificate authority");
}

/// A pin does not bypass the validity period or the host name.
#[test]
fn an_expired_or_misnamed_pinned_certificate_is_refused() {
    let ep = endpoint(rcgen_identity(&["127.0.0.1", "localhost"], true, true));
    let name = "tls-pin-expired";
    let r = upload(&ep, name, None);
    assert_refused(&ep, name, &r, "expired");

    let ep = endpoint(rcgen_identity(&["camera.example.com"], true, false));
    let name = "tls-pin-misnamed";
    let r = upload(&ep, name, None);
    assert_refused(&ep, name, &r, "does not name the host");
}
