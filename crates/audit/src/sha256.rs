//! SHA-256 (FIPS 180-4) of the texts an entry keeps a digest of, through RustCrypto's `sha2`.
//!
//! The stored form is what `sha256sum` prints: 64 lowercase hex digits of the digest of the
//! text's UTF-8 bytes. Databases written before `sha2` (when the digest was written out here)
//! hold the same strings; the vectors below pin them.

use sha2::{Digest, Sha256};

/// The SHA-256 digest of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The SHA-256 digest of `text`'s UTF-8 bytes, as 64 lowercase hex digits (what
/// `sha256sum` prints for the same bytes).
pub fn sha256_hex(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in sha256(text.as_bytes()) {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fips_vectors() {
        // FIPS 180-2 appendix B.1 and B.2, and the empty message.
        assert_eq!(
            sha256_hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        // B.3: one million 'a' (many full blocks).
        assert_eq!(
            sha256_hex(&"a".repeat(1_000_000)),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
    }

    #[test]
    fn raw_digest_is_the_hex_digits_bytes() {
        // FIPS 180-2 B.1 as bytes: `sha256` and `sha256_hex` describe the same digest.
        let want: [u8; 32] = [
            0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae,
            0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61,
            0xf2, 0x00, 0x15, 0xad,
        ];
        assert_eq!(sha256(b"abc"), want);
        // Bytes that are not UTF-8 (`printf '\xff\xfe' | sha256sum`).
        let d = sha256(&[0xff, 0xfe]);
        assert_eq!(
            &d[..4],
            [0xb3, 0xd5, 0x10, 0xef],
            "b3d510ef04275ca8e698e5b3cbb0ece3949ef9252f0cdc839e9ee347409a2209"
        );
        assert_eq!(&d[28..], [0x40, 0x9a, 0x22, 0x09]);
    }

    #[test]
    fn padding_boundaries_match_sha256sum() {
        // Lengths around the one-or-two padding blocks boundary (55, 56, 63, 64 bytes) and
        // multi-byte UTF-8; digests from `printf %s ... | sha256sum`.
        let cases = [
            (
                "a".repeat(55),
                "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318",
            ),
            (
                "a".repeat(56),
                "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a",
            ),
            (
                "a".repeat(63),
                "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34",
            ),
            (
                "a".repeat(64),
                "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb",
            ),
            (
                "héllo wörld ✓".to_string(),
                "c2a59c71097b678dc5af2eb1f98ddc575b63948b0fa6740071a945673aaada4d",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(sha256_hex(&text), want, "length {}", text.len());
        }
    }
}
