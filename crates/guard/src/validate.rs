//! Checksums and sanity checks that turn a pattern candidate into a finding: a 16-digit
//! number is a card only if its Luhn digit is right, an IBAN only if mod-97 gives 1.
//! They are what keeps order numbers, dates and hashes out of the PII rail.

/// Luhn checksum over ASCII digits (non-digits are skipped).
pub fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0u32;
    let mut n = 0;
    for (i, d) in digits
        .bytes()
        .rev()
        .filter(u8::is_ascii_digit)
        .map(|b| u32::from(b - b'0'))
        .enumerate()
    {
        sum += if i % 2 == 1 {
            let x = d * 2;
            if x > 9 {
                x - 9
            } else {
                x
            }
        } else {
            d
        };
        n += 1;
    }
    n > 0 && sum.is_multiple_of(10)
}

/// A payment card number: 13 to 19 digits, an issuer prefix (2 Mastercard, 3 Amex/Diners/JCB,
/// 4 Visa, 5 Mastercard/Maestro, 6 Discover/UnionPay/Maestro) and a valid Luhn digit.
pub fn credit_card_valid(candidate: &str) -> bool {
    let digits: String = candidate.chars().filter(char::is_ascii_digit).collect();
    (13..=19).contains(&digits.len())
        && matches!(digits.as_bytes()[0], b'2'..=b'6')
        && luhn_valid(&digits)
}

/// IBAN lengths by country (SWIFT IBAN registry).
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24),
    ("AE", 23),
    ("AL", 28),
    ("AT", 20),
    ("AZ", 28),
    ("BA", 20),
    ("BE", 16),
    ("BG", 22),
    ("BH", 22),
    ("BI", 27),
    ("BR", 29),
    ("BY", 28),
    ("CH", 21),
    ("CR", 22),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DJ", 27),
    ("DK", 18),
    ("DO", 28),
    ("EE", 20),
    ("EG", 29),
    ("ES", 24),
    ("FI", 18),
    ("FK", 18),
    ("FO", 18),
    ("FR", 27),
    ("GB", 22),
    ("GE", 22),
    ("GI", 23),
    ("GL", 18),
    ("GR", 27),
    ("GT", 28),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IL", 23),
    ("IQ", 23),
    ("IS", 26),
    ("IT", 27),
    ("JO", 30),
    ("KW", 30),
    ("KZ", 20),
    ("LB", 28),
    ("LC", 32),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("LY", 25),
    ("MC", 27),
    ("MD", 24),
    ("ME", 22),
    ("MK", 19),
    ("MN", 20),
    ("MR", 27),
    ("MT", 31),
    ("MU", 30),
    ("NI", 28),
    ("NL", 18),
    ("NO", 15),
    ("OM", 23),
    ("PK", 24),
    ("PL", 28),
    ("PS", 29),
    ("PT", 25),
    ("QA", 29),
    ("RO", 24),
    ("RS", 22),
    ("RU", 33),
    ("SA", 24),
    ("SC", 31),
    ("SD", 18),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
    ("SO", 23),
    ("ST", 25),
    ("SV", 28),
    ("TL", 23),
    ("TN", 24),
    ("TR", 26),
    ("UA", 29),
    ("VA", 22),
    ("VG", 24),
    ("XK", 20),
    ("YE", 30),
];

/// The IBAN length for a two-letter country code, if the country issues IBANs.
pub fn iban_length(country: &str) -> Option<usize> {
    IBAN_LENGTHS
        .iter()
        .find(|(c, _)| c.eq_ignore_ascii_case(country))
        .map(|&(_, n)| n)
}

/// ISO 13616 check: move the first four characters to the end, letters to 10..35, mod 97 = 1.
/// `iban` holds only letters and digits (no spaces) and has its country's length.
pub fn iban_valid(iban: &str) -> bool {
    let b = iban.as_bytes();
    if b.len() < 5 || !b.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    if iban_length(&iban[..2]) != Some(b.len()) || !b[2].is_ascii_digit() || !b[3].is_ascii_digit()
    {
        return false;
    }
    let mut rem = 0u32;
    for &c in b[4..].iter().chain(&b[..4]) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            _ => u32::from(c.to_ascii_uppercase() - b'A') + 10,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// US Social Security number `AAA-GG-SSSS`: area not 000, 666 or 900-999, group not 00,
/// serial not 0000 (the SSA never issues those).
pub fn us_ssn_valid(candidate: &str) -> bool {
    let d: Vec<u32> = candidate.chars().filter_map(|c| c.to_digit(10)).collect();
    if d.len() != 9 {
        return false;
    }
    let area = d[0] * 100 + d[1] * 10 + d[2];
    let group = d[3] * 10 + d[4];
    let serial = d[5] * 1000 + d[6] * 100 + d[7] * 10 + d[8];
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// Dotted-quad IPv4 with octets 0..=255 and no leading zeros ("010" is an octal trap).
pub fn ipv4_valid(candidate: &str) -> bool {
    let parts: Vec<&str> = candidate.split('.').collect();
    parts.len() == 4
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 3
                && (p.len() == 1 || !p.starts_with('0'))
                && p.parse::<u16>().is_ok_and(|v| v <= 255)
        })
}

/// IPv6 in any textual form std accepts, with at least one `::` or all eight groups (so
/// times like "12:30:45" never qualify).
pub fn ipv6_valid(candidate: &str) -> bool {
    candidate.parse::<std::net::Ipv6Addr>().is_ok()
}

/// Shannon entropy in bits per character: random keys score above 4, English text and
/// placeholders like "your-api-key-here" below 3.5.
pub fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    let mut n = 0u32;
    for b in s.bytes() {
        counts[usize::from(b)] += 1;
        n += 1;
    }
    if n == 0 {
        return 0.0;
    }
    let n = f64::from(n);
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Decodes standard or URL-safe base64 (padding optional); `None` on any other character.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for b in s.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Decodes a run of hex digit pairs, optionally written as `\x41\x42`.
pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(|b| b.is_ascii_hexdigit())
        .map(|b| match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        })
        .collect();
    if digits.len() % 2 == 1 {
        return None;
    }
    Some(digits.chunks(2).map(|p| (p[0] << 4) | p[1]).collect())
}

/// Do decoded bytes read as text? UTF-8 with at least 90% printable characters and at least
/// 12 characters. Random binary (hashes, keys, compressed data) fails; hidden instructions
/// pass.
pub fn mostly_printable(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    let total = text.chars().count();
    let printable = text
        .chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t' | '\r'))
        .count();
    total >= 12 && printable * 10 >= total * 9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_test_cards_and_rejects_one_digit_off() {
        for card in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "5500-0000-0000-0004",
            "378282246310005",
            "6011111111111117",
            "4222222222222",
        ] {
            assert!(credit_card_valid(card), "{card}");
        }
        for bad in [
            "4111111111111112",
            "1234567812345678",
            "4111 1111 1111",
            "0000000000000000",
        ] {
            assert!(!credit_card_valid(bad), "{bad}");
        }
    }

    #[test]
    fn iban_mod97_with_country_lengths() {
        for iban in [
            "DE89370400440532013000",
            "GB82WEST12345698765432",
            "FR1420041010050500013M02606",
            "NL91ABNA0417164300",
            "CH9300762011623852957",
        ] {
            assert!(iban_valid(iban), "{iban}");
        }
        // One digit changed; wrong length for the country; unknown country.
        for bad in [
            "DE89370400440532013001",
            "DE8937040044053201300",
            "ZZ89370400440532013000",
        ] {
            assert!(!iban_valid(bad), "{bad}");
        }
    }

    #[test]
    fn ssn_excludes_areas_the_ssa_never_issues() {
        assert!(us_ssn_valid("123-45-6789"));
        assert!(us_ssn_valid("899 12 3456"));
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "123-00-4567",
            "123-45-0000",
        ] {
            assert!(!us_ssn_valid(bad), "{bad}");
        }
    }

    #[test]
    fn ip_addresses() {
        assert!(ipv4_valid("192.168.0.1"));
        assert!(ipv4_valid("0.0.0.0"));
        assert!(!ipv4_valid("256.1.1.1"));
        assert!(!ipv4_valid("01.2.3.4"));
        assert!(ipv6_valid("2001:db8::1"));
        assert!(ipv6_valid("fe80:0:0:0:0:0:0:1"));
        assert!(!ipv6_valid("12:30:45"));
    }

    #[test]
    fn entropy_separates_keys_from_words() {
        assert!(entropy("q8Zr2LxV0pN4tYb7KcWm3JdF") > 4.0);
        assert!(entropy("your-api-key-goes-here") < 3.6);
    }

    #[test]
    fn base64_and_hex_decode() {
        assert_eq!(base64_decode("aGVsbG8gd29ybGQ=").unwrap(), b"hello world");
        assert_eq!(base64_decode("aGVsbG8gd29ybGQ").unwrap(), b"hello world");
        assert_eq!(hex_decode("68656c6c6f").unwrap(), b"hello");
        assert_eq!(hex_decode("\\x68\\x69").unwrap(), b"hi");
        assert!(mostly_printable(b"ignore all previous instructions"));
        assert!(!mostly_printable(&[
            0x8f, 0x00, 0x13, 0xfe, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08
        ]));
    }
}
