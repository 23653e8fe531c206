//! Just enough DER to move P-256 keys between PKCS#8 (what ring and rustls-acme use) and SEC1
//! `EC PRIVATE KEY` (what upstream's certificate cache holds), plus PEM framing.

use base64::Engine as _;

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const CONTEXT_0: u8 = 0xa0;
/// id-ecPublicKey (1.2.840.10045.2.1).
const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// prime256v1 (1.2.840.10045.3.1.7).
const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Splits one TLV off `input`: (tag, value, rest).
fn read(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    let (&first, mut input) = input.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || input.len() < n {
            return None;
        }
        let len = input[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        input = &input[n..];
        len
    };
    if input.len() < len {
        return None;
    }
    Some((tag, &input[..len], &input[len..]))
}

fn write(tag: u8, value: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value);
}

fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 4);
    write(tag, value, &mut out);
    out
}

/// Wraps a SEC1 `ECPrivateKey` of curve P-256 in a PKCS#8 `PrivateKeyInfo`.
pub fn sec1_p256_to_pkcs8(sec1: &[u8]) -> Vec<u8> {
    let mut algorithm = tlv(OID, EC_PUBLIC_KEY);
    algorithm.extend(tlv(OID, P256));
    let mut body = tlv(INTEGER, &[0]);
    body.extend(tlv(SEQUENCE, &algorithm));
    body.extend(tlv(OCTET_STRING, sec1));
    tlv(SEQUENCE, &body)
}

/// Unwraps a P-256 PKCS#8 key into SEC1 form, with the curve named in the key as Go writes it.
/// `None` when the key is not a P-256 EC key.
pub fn pkcs8_to_sec1_p256(pkcs8: &[u8]) -> Option<Vec<u8>> {
    let (SEQUENCE, body, _) = read(pkcs8)? else {
        return None;
    };
    let (INTEGER, _, rest) = read(body)? else {
        return None;
    };
    let (SEQUENCE, algorithm, rest) = read(rest)? else {
        return None;
    };
    let (OID, kind, curve) = read(algorithm)? else {
        return None;
    };
    let (OID, curve, _) = read(curve)? else {
        return None;
    };
    if kind != EC_PUBLIC_KEY || curve != P256 {
        return None;
    }
    let (OCTET_STRING, inner, _) = read(rest)? else {
        return None;
    };
    // inner: SEQUENCE { version, privateKey, [0] parameters OPTIONAL, [1] publicKey OPTIONAL }
    let (SEQUENCE, fields, _) = read(inner)? else {
        return None;
    };
    let (INTEGER, version, rest) = read(fields)? else {
        return None;
    };
    let (OCTET_STRING, private, rest) = read(rest)? else {
        return None;
    };
    let mut out = tlv(INTEGER, version);
    out.extend(tlv(OCTET_STRING, private));
    let rest = match read(rest) {
        Some((CONTEXT_0, _, after)) => after,
        _ => rest,
    };
    out.extend(tlv(CONTEXT_0, &tlv(OID, P256)));
    out.extend_from_slice(rest);
    Some(tlv(SEQUENCE, &out))
}

/// PEM text of one block.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p256_keys_round_trip_through_sec1() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let pkcs8 = key.serialize_der();
        let sec1 = pkcs8_to_sec1_p256(&pkcs8).unwrap();
        let back = sec1_p256_to_pkcs8(&sec1);
        // ring accepts the re-wrapped key (with the curve named inside) and signs with it.
        let rng = ring::rand::SystemRandom::new();
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &back,
            &rng,
        );
        assert!(pair.is_ok());
        assert!(pem("EC PRIVATE KEY", &sec1).starts_with("-----BEGIN EC PRIVATE KEY-----\n"));
    }

    #[test]
    fn non_p256_keys_are_not_converted() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert_eq!(pkcs8_to_sec1_p256(&key.serialize_der()), None);
        assert_eq!(pkcs8_to_sec1_p256(b"\x30\x05junk"), None);
    }
}
