//! The local endpoint's request authentication (`kvs_local_endpoint::sigv4`): the request target, headers
//! and Authorization header of any request, as hyper hands them to the server.
//! Input: a flags byte, then `<path?query>\n<name: value>\n…\n\n<body>`. Flags: bit 0 signs the
//! request with the known key first (replacing Authorization/X-Amz-Date), bit 1 requires a
//! session token, bit 2 marks the key expired, bit 3 disables the clock-skew check, bit 4
//! accepts any region, bits 5-7 age the signature by 0-35 minutes.
//! Checks: no panic; a request signed with the key verifies (or fails for the one reason the
//! flags give); dates read back as themselves.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use kvs_local_endpoint::sigv4::{
    self, AuthError, EMPTY_SHA256, KeyInfo, RequestParts, VerifyParams,
};
use hmac::{Hmac, Mac};
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const AK: &str = "AKIDFUZZ";
const SECRET: &str = "fuzz/secret+KEY";
const TOKEN: &str = "fuzz-session-token";

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut lines = rest.split(|&b| b == b'\n');
    // The request target as hyper accepts it.
    let Ok(pq) = PathAndQuery::try_from(lines.next().unwrap_or_default()) else {
        return;
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut consumed = pq.as_str().len() + 1;
    for line in lines.by_ref() {
        consumed += line.len() + 1;
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.push((
            name.as_str().to_owned(),
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        ));
    }
    let body = rest.get(consumed..).unwrap_or_default();
    let path = pq.path();
    let query = pq.query().unwrap_or("");
    let payload = if path == "/putMedia" {
        EMPTY_SHA256.to_owned()
    } else {
        sigv4::sha256_hex(body)
    };

    let now = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    let age = Duration::from_secs(u64::from(flags >> 5) * 5 * 60);
    let sign = flags & 1 != 0;
    let needs_token = flags & 2 != 0;
    let expired = flags & 4 != 0;
    let max_skew = (flags & 8 == 0).then(|| Duration::from_secs(5 * 60));
    let region = (flags & 16 == 0).then_some("us-west-2");

    if sign {
        let amz_date = sigv4::format_amz_date(now - age);
        headers.retain(|(n, _)| {
            !matches!(
                n.as_str(),
                "authorization" | "x-amz-date" | "x-amz-security-token"
            )
        });
        headers.push(("x-amz-date".into(), amz_date.clone()));
        if !headers.iter().any(|(n, _)| n == "host") {
            headers.push(("host".into(), "127.0.0.1:4567".into()));
        }
        if needs_token {
            headers.push(("x-amz-security-token".into(), TOKEN.into()));
        }
        let mut names: Vec<String> = headers.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        names.dedup();
        let refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let req = RequestParts {
            method: "POST",
            path,
            query,
            headers: &refs,
            payload_sha256: &payload,
        };
        let canonical = sigv4::canonical_request(&req, &names);
        let scope = format!("{}/us-west-2/kinesisvideo/aws4_request", &amz_date[..8]);
        let sts = sigv4::string_to_sign(&amz_date, &scope, &canonical);
        let key = sigv4::signing_key(SECRET, &amz_date[..8], "us-west-2", "kinesisvideo");
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(sts.as_bytes());
        let sig: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        headers.push((
            "authorization".into(),
            format!(
                "AWS4-HMAC-SHA256 Credential={AK}/{scope}, SignedHeaders={}, Signature={sig}",
                names.join(";")
            ),
        ));
    }

    let refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let req = RequestParts {
        method: "POST",
        path,
        query,
        headers: &refs,
        payload_sha256: &payload,
    };
    let params = VerifyParams {
        service: "kinesisvideo",
        region,
        now,
        max_skew,
    };
    let result = sigv4::verify(&req, &params, |ak| {
        (ak == AK || !sign).then(|| KeyInfo {
            secret_access_key: SECRET.into(),
            session_token: needs_token.then(|| TOKEN.into()),
            expired,
        })
    });
    if let Err(e) = &result {
        let _ = (e.to_string(), e.status(), e.error_type());
    }
    if sign {
        match result {
            Err(AuthError::SignatureExpired { .. }) => {
                assert!(
                    max_skew.is_some_and(|s| age > s),
                    "signature wrongly expired"
                )
            }
            Err(AuthError::ExpiredToken) => assert!(expired),
            Ok(ak) => {
                assert_eq!(ak, AK);
                assert!(!expired && max_skew.is_none_or(|s| age <= s));
            }
            Err(e) => panic!("a correctly signed request was refused: {e:?}"),
        }
    }
    for (n, v) in &headers {
        if n == "authorization" {
            let _ = sigv4::parse_authorization(v);
        }
        if n == "x-amz-date"
            && let Some(t) = sigv4::parse_amz_date(v)
        {
            let again = sigv4::format_amz_date(t);
            assert_eq!(sigv4::parse_amz_date(&again), Some(t));
        }
    }
});
