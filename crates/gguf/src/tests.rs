use super::*;
use crate::writer::GgufWriter;
use std::io::Write;

fn sample() -> GgufWriter {
    GgufWriter::new()
        .meta("general.architecture", Value::String("llama".into()))
        .meta("llama.block_count", Value::U32(2))
        .meta("llama.rope.freq_base", Value::F32(10000.0))
        .meta(
            "tokenizer.ggml.tokens",
            Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
        )
        .f32_tensor("w", &[4, 2], &[1., 2., 3., 4., 5., 6., 7., 8.])
        .f32_tensor("b", &[3], &[9., 10., 11.])
}

fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f
}

#[test]
fn round_trip() {
    let f = write(&sample().to_bytes());
    let g = GgufFile::open(f.path()).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get_u64("llama.block_count").unwrap(), 2);
    assert_eq!(g.get_f64("llama.rope.freq_base").unwrap(), 10000.0);
    assert_eq!(
        g.get_str_array("tokenizer.ggml.tokens").unwrap(),
        vec!["a", "b"]
    );
    let w = g.tensor_info("w").unwrap();
    assert_eq!(w.shape(), vec![2, 4]);
    let data = g.tensor_data(w).unwrap();
    assert_eq!(f32::from_le_bytes(data[12..16].try_into().unwrap()), 4.0);
    let b = g.tensor_data(g.tensor_info("b").unwrap()).unwrap();
    assert_eq!(f32::from_le_bytes(b[8..12].try_into().unwrap()), 11.0);
    g.check_tensor_data().unwrap();
}

#[test]
fn wrong_type_and_missing_key_are_named() {
    let f = write(&sample().to_bytes());
    let g = GgufFile::open(f.path()).unwrap();
    let e = g.get_u64("general.architecture").unwrap_err().to_string();
    assert!(
        e.contains("general.architecture") && e.contains("string"),
        "{e}"
    );
    let e = g.get_str("nope").unwrap_err().to_string();
    assert!(e.contains("\"nope\" is missing"), "{e}");
    let e = g.tensor_info("zz").unwrap_err().to_string();
    assert!(e.contains("\"zz\""), "{e}");
}

#[test]
fn bad_magic_names_file_and_problem() {
    let f = write(b"{\"__metadata__\": 1}");
    let e = GgufFile::open(f.path()).unwrap_err().to_string();
    assert!(e.contains("not a GGUF file"), "{e}");
    assert!(e.contains(&f.path().display().to_string()), "{e}");
}

#[test]
fn every_truncation_of_the_header_is_an_error_not_a_panic() {
    let bytes = sample().to_bytes();
    let header_end = bytes.len() - 64; // both tensors are inside the last 64 bytes
    for n in 0..header_end {
        let f = write(&bytes[..n]);
        assert!(
            GgufFile::open(f.path()).is_err(),
            "prefix of {n} bytes was accepted"
        );
    }
}

#[test]
fn truncated_tensor_data_is_reported_on_access() {
    let bytes = sample().to_bytes();
    let f = write(&bytes[..bytes.len() - 4]);
    let g = GgufFile::open(f.path()).expect("header is intact");
    let e = g.check_tensor_data().unwrap_err().to_string();
    assert!(e.contains("truncated") && e.contains("\"b\""), "{e}");
}

#[test]
fn huge_counts_are_rejected_before_allocating() {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&u64::MAX.to_le_bytes()); // tensors
    bytes.extend_from_slice(&0u64.to_le_bytes());
    let f = write(&bytes);
    let e = GgufFile::open(f.path()).unwrap_err().to_string();
    assert!(e.contains("tensor infos"), "{e}");

    // A string whose length field claims 2^60 bytes.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
    bytes.extend_from_slice(&[0; 16]);
    let f = write(&bytes);
    let e = GgufFile::open(f.path()).unwrap_err().to_string();
    assert!(e.contains("truncated or corrupt"), "{e}");

    // An array claiming 2^62 u64 items.
    let g = GgufWriter::new()
        .meta("k", Value::Array(vec![Value::U64(1)]))
        .to_bytes();
    let mut bytes = g.clone();
    let pos = 24 + 8 + 1 + 4 + 4; // header, key len, key, value type, item type
    bytes[pos..pos + 8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let f = write(&bytes);
    let e = GgufFile::open(f.path()).unwrap_err().to_string();
    assert!(e.contains("items in \"k\""), "{e}");
}

#[test]
fn unsupported_versions_and_types_are_named() {
    let mut bytes = sample().to_bytes();
    bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
    let f = write(&bytes);
    let e = GgufFile::open(f.path()).unwrap_err().to_string();
    assert!(e.contains("version 1"), "{e}");

    let w = GgufWriter::new()
        .tensor("t", &[32], GgmlType::F32, vec![0; 128])
        .to_bytes();
    let mut bytes = w.clone();
    // Type code sits after: header 24, name len 8 + "t", n_dims 4, dim 8.
    let pos = 24 + 8 + 1 + 4 + 8;
    bytes[pos..pos + 4].copy_from_slice(&39u32.to_le_bytes());
    let f = write(&bytes);
    let e = GgufFile::open(f.path()).unwrap_err().to_string();
    assert!(e.contains("MXFP4 is not supported"), "{e}");
}

#[test]
fn block_size_mismatch_is_rejected() {
    let w = GgufWriter::new()
        .tensor("q", &[31], GgmlType::Q4_0, vec![0; 18])
        .to_bytes();
    let f = write(&w);
    let e = GgufFile::open(f.path()).unwrap_err().to_string();
    assert!(e.contains("block size 32"), "{e}");
}

/// A string array comes back as one compact `Value::Strings`, which writes back to the same
/// bytes, prints like an array, and still names the key when an item is not UTF-8.
#[test]
fn string_arrays_are_stored_compactly_and_round_trip() {
    let words: Vec<String> = (0..1000).map(|i| format!("tok{i}")).collect();
    let bytes = GgufWriter::new()
        .meta(
            "tokenizer.ggml.tokens",
            Value::Array(words.iter().cloned().map(Value::String).collect()),
        )
        .meta("empty", Value::Array(vec![Value::String(String::new())]))
        .to_bytes();
    let g = GgufFile::open(write(&bytes).path()).unwrap();
    let Some(Value::Strings(items)) = g.get("tokenizer.ggml.tokens") else {
        panic!("{:?}", g.get("tokenizer.ggml.tokens"));
    };
    assert_eq!(items.len(), 1000);
    assert_eq!(items.get(999), Some("tok999"));
    assert_eq!(items.get(1000), None);
    assert!(items.iter().eq(words.iter().map(String::as_str)));
    assert_eq!(g.get_str_array("empty").unwrap(), vec![""]);
    let shown = g.get("tokenizer.ggml.tokens").unwrap().to_string();
    assert!(
        shown.starts_with("[\"tok0\", \"tok1\"") && shown.ends_with("… 1000 items]"),
        "{shown}"
    );

    // Written back from the compact form: the same file.
    let again = GgufWriter::new()
        .meta(
            "tokenizer.ggml.tokens",
            g.get("tokenizer.ggml.tokens").unwrap().clone(),
        )
        .meta("empty", g.get("empty").unwrap().clone())
        .to_bytes();
    assert_eq!(again, bytes);

    // A byte that is not UTF-8 inside an item.
    let mut bad = bytes.clone();
    let at = bad.windows(6).position(|w| w == b"tok500").unwrap();
    bad[at] = 0xFF;
    let e = GgufFile::open(write(&bad).path()).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer.ggml.tokens") && e.contains("UTF-8"),
        "{e}"
    );
}

/// Integer arrays come back compact, keep their item type (written back to the same bytes),
/// and answer `get_i64_array`; u64 arrays (which may not fit i64) stay as values.
#[test]
fn integer_arrays_are_stored_compactly_and_round_trip() {
    let types: Vec<Value> = (0..300).map(|i| Value::I32(i % 7 - 3)).collect();
    let bytes = GgufWriter::new()
        .meta("tokenizer.ggml.token_type", Value::Array(types))
        .meta("bytes", Value::Array(vec![Value::U8(0), Value::U8(255)]))
        .meta("wide", Value::Array(vec![Value::U64(u64::MAX)]))
        .meta("none", Value::Array(Vec::new()))
        .to_bytes();
    let g = GgufFile::open(write(&bytes).path()).unwrap();
    let Some(Value::Ints(a)) = g.get("tokenizer.ggml.token_type") else {
        panic!("{:?}", g.get("tokenizer.ggml.token_type"));
    };
    assert_eq!(a.item_code(), 5);
    assert_eq!(a.as_slice().len(), 300);
    let want: Vec<i64> = (0..300).map(|i| i % 7 - 3).collect();
    assert_eq!(g.get_i64_array("tokenizer.ggml.token_type").unwrap(), want);
    assert_eq!(g.get_i64_array("bytes").unwrap(), vec![0, 255]);
    assert!(matches!(g.get("wide"), Some(Value::Array(_))));
    // An empty array (whose item type a writer may not know) reads as empty either way.
    assert!(g.get_str_array("none").unwrap().is_empty());
    assert!(g.get_i64_array("none").unwrap().is_empty());
    assert_eq!(g.get("bytes").unwrap().to_string(), "[0, 255]");
    let again = ["tokenizer.ggml.token_type", "bytes", "wide", "none"]
        .into_iter()
        .fold(GgufWriter::new(), |w, k| {
            w.meta(k, g.get(k).unwrap().clone())
        })
        .to_bytes();
    assert_eq!(again, bytes);
}

#[test]
fn a_split_model_opens_from_any_part_and_bad_sets_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let whole = write(&sample().to_bytes());
    let first = dir.path().join("model-00001-of-00002.gguf");
    let parts = sample().to_split_bytes(2);
    assert_eq!(parts.len(), 2);
    for (k, bytes) in parts.iter().enumerate() {
        let p = split_path(&first, k as u64, 2).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let a = GgufFile::open(whole.path()).unwrap();
    for k in 0..2 {
        let g = GgufFile::open(split_path(&first, k, 2).unwrap()).unwrap();
        assert_eq!(g.part_paths().len(), 2);
        assert_eq!(g.path(), first.as_path());
        assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(g.tensors.len(), 2);
        for name in ["w", "b"] {
            let (ta, tb) = (a.tensor_info(name).unwrap(), g.tensor_info(name).unwrap());
            assert_eq!(
                a.tensor_data(ta).unwrap(),
                g.tensor_data(tb).unwrap(),
                "{name}"
            );
        }
        assert_eq!(g.tensor_info("b").unwrap().part, 1);
    }
    // A missing part, a part of another split, a file named otherwise.
    let second = split_path(&first, 1, 2).unwrap();
    let saved = std::fs::read(&second).unwrap();
    std::fs::remove_file(&second).unwrap();
    let e = GgufFile::open(&first).unwrap_err().to_string();
    assert!(e.contains("part 2 of 2") && e.contains("missing"), "{e}");
    let other = GgufWriter::new()
        .f32_tensor("w", &[1], &[0.])
        .f32_tensor("x", &[1], &[0.])
        .f32_tensor("y", &[1], &[0.])
        .to_split_bytes(2);
    std::fs::write(&second, &other[1]).unwrap();
    let e = GgufFile::open(&first).unwrap_err().to_string();
    assert!(e.contains("does not belong with"), "{e}");
    std::fs::write(&second, &saved).unwrap();
    let renamed = dir.path().join("model.gguf");
    std::fs::copy(&first, &renamed).unwrap();
    let e = GgufFile::open(&renamed).unwrap_err().to_string();
    assert!(e.contains("NAME-00001-of-00002.gguf"), "{e}");
    assert_eq!(
        split_path(Path::new("/m/x-00002-of-00003.gguf"), 0, 3).unwrap(),
        Path::new("/m/x-00001-of-00003.gguf")
    );
}
