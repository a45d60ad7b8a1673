//! AWS Signature Version 4 verification, as the KVS front end does it.
//!
//! Owns: parsing the `Authorization` header, rebuilding the canonical request from the headers the
//! client says it signed, deriving the signing key and comparing signatures in constant time, plus
//! the `X-Amz-Date` freshness check. Hand-written on `hmac` + `sha2` because `aws-sigv4` only
//! *signs*: a verifier must rebuild the canonical request from exactly the `SignedHeaders` the
//! client chose (the C producer signs `connection` and `transfer-encoding`, which `aws-sigv4`
//! never does), so re-signing with the SDK would reject real clients.
//!
//! PutMedia requests are signed with the SHA-256 of the empty string as the payload hash
//! ([`EMPTY_SHA256`]); control-plane requests with the SHA-256 of their JSON body.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Hex SHA-256 of the empty string: the payload hash of every PutMedia request.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Why a request failed authentication. [`AuthError::error_type`] and [`AuthError::status`] give
/// the answer the service sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("Missing Authentication Token")]
    Missing,
    #[error("{0}")]
    Incomplete(String),
    #[error("The security token included in the request is invalid.")]
    UnknownAccessKey,
    #[error(
        "The request signature we calculated does not match the signature you provided. Check \
         your AWS Secret Access Key and signing method. Consult the service documentation for \
         details."
    )]
    SignatureMismatch,
    #[error("{0}")]
    Scope(String),
    #[error(
        "Signature expired: {request} is now earlier than {earliest} ({now} - {skew_min} min.)"
    )]
    SignatureExpired {
        request: String,
        earliest: String,
        now: String,
        skew_min: u64,
    },
    #[error(
        "Signature not yet current: {request} is still later than {latest} ({now} + {skew_min} min.)"
    )]
    SignatureNotYetCurrent {
        request: String,
        latest: String,
        now: String,
        skew_min: u64,
    },
    #[error("The security token included in the request is expired")]
    ExpiredToken,
}

impl AuthError {
    /// The `x-amzn-ErrorType` / `__type` the service answers with.
    pub fn error_type(&self) -> &'static str {
        match self {
            AuthError::Missing => "MissingAuthenticationTokenException",
            AuthError::Incomplete(_) => "IncompleteSignatureException",
            AuthError::UnknownAccessKey => "UnrecognizedClientException",
            AuthError::SignatureMismatch
            | AuthError::Scope(_)
            | AuthError::SignatureExpired { .. }
            | AuthError::SignatureNotYetCurrent { .. } => "InvalidSignatureException",
            AuthError::ExpiredToken => "ExpiredTokenException",
        }
    }

    /// The HTTP status the service answers with.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Incomplete(_) => 400,
            _ => 403,
        }
    }
}

/// The parsed `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub access_key_id: String,
    pub date: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

/// Parses `AWS4-HMAC-SHA256 Credential=AK/DATE/REGION/SERVICE/aws4_request, SignedHeaders=a;b,
/// Signature=hex`.
pub fn parse_authorization(value: &str) -> Result<Authorization, AuthError> {
    let rest = value.strip_prefix(ALGORITHM).ok_or_else(|| {
        AuthError::Incomplete(format!("Unsupported algorithm; expected {ALGORITHM}"))
    })?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let missing = |what: &str| {
        AuthError::Incomplete(format!(
            "Authorization header requires '{what}' parameter. Authorization={ALGORITHM} …"
        ))
    };
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let signed_headers = signed_headers.ok_or_else(|| missing("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| missing("Signature"))?;

    let scope: Vec<&str> = credential.split('/').collect();
    if scope.len() != 5 || scope[4] != "aws4_request" || scope.iter().any(|s| s.is_empty()) {
        return Err(AuthError::Incomplete(
            "Credential should have the form <key>/<date>/<region>/<service>/aws4_request".into(),
        ));
    }
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AuthError::SignatureMismatch);
    }
    Ok(Authorization {
        access_key_id: scope[0].to_owned(),
        date: scope[1].to_owned(),
        region: scope[2].to_owned(),
        service: scope[3].to_owned(),
        signed_headers: signed_headers
            .split(';')
            .map(|h| h.trim().to_ascii_lowercase())
            .collect(),
        signature: signature.to_ascii_lowercase(),
    })
}

/// A request as the verifier needs it: header names in any case, values as received.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    pub method: &'a str,
    /// The path as sent on the request line, without the query.
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    /// Lower-case hex SHA-256 of the payload ([`EMPTY_SHA256`] for PutMedia).
    pub payload_sha256: &'a str,
}

impl RequestParts<'_> {
    fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
            .collect()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).into_iter().next()
    }
}

/// What the verifier needs to know about an access key.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub secret_access_key: String,
    pub session_token: Option<String>,
    pub expired: bool,
}

/// Settings of a verification.
#[derive(Debug, Clone)]
pub struct VerifyParams<'a> {
    pub service: &'a str,
    /// `None` accepts any region in the credential scope.
    pub region: Option<&'a str>,
    pub now: SystemTime,
    /// Allowed distance between `X-Amz-Date` and `now`; `None` disables the check.
    pub max_skew: Option<Duration>,
}

/// Verifies a SigV4-signed request. On success returns the access key id that signed it.
pub fn verify(
    req: &RequestParts<'_>,
    params: &VerifyParams<'_>,
    lookup: impl FnOnce(&str) -> Option<KeyInfo>,
) -> Result<String, AuthError> {
    let auth_value = req.header("authorization").ok_or(AuthError::Missing)?;
    let auth = parse_authorization(auth_value)?;

    let amz_date = req.header("x-amz-date").ok_or_else(|| {
        AuthError::Incomplete(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
                .into(),
        )
    })?;
    let request_time = parse_amz_date(amz_date).ok_or_else(|| {
        AuthError::Incomplete(format!(
            "Date must be in ISO-8601 'basic format'. Got '{amz_date}'."
        ))
    })?;
    if !amz_date.starts_with(&auth.date) {
        return Err(AuthError::Scope(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}', from '{amz_date}'.",
            auth.date,
            &amz_date[..8]
        )));
    }
    if auth.service != params.service {
        return Err(AuthError::Scope(format!(
            "Credential should be scoped to correct service: '{}'. ",
            params.service
        )));
    }
    if let Some(region) = params.region
        && auth.region != region
    {
        return Err(AuthError::Scope(format!(
            "Credential should be scoped to a valid region, not '{}'. ",
            auth.region
        )));
    }
    if !auth.signed_headers.iter().any(|h| h == "host") {
        return Err(AuthError::SignatureMismatch);
    }

    let key = lookup(&auth.access_key_id).ok_or(AuthError::UnknownAccessKey)?;
    if let Some(expected) = &key.session_token
        && req.header("x-amz-security-token") != Some(expected.as_str())
    {
        return Err(AuthError::UnknownAccessKey);
    }

    let canonical = canonical_request(req, &auth.signed_headers);
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    let sts = string_to_sign(amz_date, &scope, &canonical);
    let key_bytes = signing_key(
        &key.secret_access_key,
        &auth.date,
        &auth.region,
        &auth.service,
    );
    let provided = decode_hex(&auth.signature).ok_or(AuthError::SignatureMismatch)?;
    let mut mac = HmacSha256::new_from_slice(&key_bytes).expect("HMAC takes any key length");
    mac.update(sts.as_bytes());
    mac.verify_slice(&provided)
        .map_err(|_| AuthError::SignatureMismatch)?;

    if let Some(skew) = params.max_skew {
        let skew_min = skew.as_secs() / 60;
        if request_time + skew < params.now {
            return Err(AuthError::SignatureExpired {
                request: amz_date.to_owned(),
                earliest: format_amz_date(params.now - skew),
                now: format_amz_date(params.now),
                skew_min,
            });
        }
        if request_time > params.now + skew {
            return Err(AuthError::SignatureNotYetCurrent {
                request: amz_date.to_owned(),
                latest: format_amz_date(params.now + skew),
                now: format_amz_date(params.now),
                skew_min,
            });
        }
    }
    if key.expired {
        return Err(AuthError::ExpiredToken);
    }
    Ok(auth.access_key_id)
}

/// The canonical request over `signed_headers` (lower-case names, in the order given).
pub fn canonical_request(req: &RequestParts<'_>, signed_headers: &[String]) -> String {
    let mut out = String::with_capacity(512);
    out.push_str(req.method);
    out.push('\n');
    out.push_str(&canonical_uri(req.path));
    out.push('\n');
    out.push_str(&canonical_query(req.query));
    out.push('\n');
    for name in signed_headers {
        out.push_str(name);
        out.push(':');
        let values: Vec<String> = req
            .header_values(name)
            .into_iter()
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(req.payload_sha256);
    out
}

/// The string to sign for a canonical request.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// The SigV4 signing key: HMAC chain over date, region, service and `aws4_request`.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, b"aws4_request")
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    encode_hex(&Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    // Non-S3 services encode the (already encoded) path segments once more.
    path.split('/')
        .map(uri_encode)
        .collect::<Vec<_>>()
        .join("/")
}

fn canonical_query(query: &str) -> String {
    if query.is_empty() {
        return String::new();
    }
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k)),
                uri_encode(&percent_decode(v)),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(v) = s.get(i + 1..i + 3).and_then(decode_hex)
        {
            out.push(v[0]);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Parses `YYYYMMDDTHHMMSSZ`.
pub fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, sec) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(y as i64, mo as u32, d as u32);
    let secs = days * 86_400 + (h * 3600 + mi * 60 + sec) as i64;
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

/// Formats a time as `YYYYMMDDTHHMMSSZ`.
pub fn format_amz_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

// Howard Hinnant's days_from_civil / civil_from_days (proleptic Gregorian, days since 1970-01-01).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_date_round_trip() {
        let t = parse_amz_date("20261122T013743Z").unwrap();
        assert_eq!(format_amz_date(t), "20261122T013743Z");
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_795_311_463
        );
        assert!(parse_amz_date("20261122 013743Z").is_none());
        assert!(parse_amz_date("20261322T013743Z").is_none());
    }

    #[test]
    fn authorization_header_parses() {
        let a = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AKID/20261122/us-west-2/kinesisvideo/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        )
        .unwrap();
        assert_eq!(a.access_key_id, "AKID");
        assert_eq!(a.region, "us-west-2");
        assert_eq!(a.signed_headers, vec!["host", "x-amz-date"]);
        assert!(matches!(
            parse_authorization("AWS4-HMAC-SHA256 SignedHeaders=host"),
            Err(AuthError::Incomplete(_))
        ));
    }

    #[test]
    fn percent_sign_before_non_ascii_in_the_query() {
        // Found by a crafted input through the fuzz target local_sigv4: hyper accepts non-ASCII bytes in
        // the query, and `%` followed by one ('%aé', '%é') sliced a str inside a character,
        // panicking the request handler.
        assert_eq!(canonical_query("%a\u{e9}=1"), "%25a%C3%A9=1");
        assert_eq!(canonical_query("a=%\u{e9}x"), "a=%25%C3%A9x");
        assert_eq!(canonical_query("a=%41%zz"), "a=A%25zz");
    }
}
