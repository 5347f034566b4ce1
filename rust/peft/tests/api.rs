//! The safe API against the tiny test model (tests/data/tiny, or $PEFT_TEST_DATA/tiny).
use peft::{convert_adapter, norm, save, target, Batch, Bias, ConvertOptions, ErrorKind, GgufType, Ia3Options, LoraOptions, Model, Opt, Variant,
           VeraOptions};
use std::path::PathBuf;

fn data() -> PathBuf {
    match std::env::var_os("PEFT_TEST_DATA") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data"),
    }
}

fn tiny() -> Model {
    Model::open_with(data().join("tiny"), &peft::OpenOptions { threads: 1, backend: None, frozen_dtype: Some("bf16".into()) }).expect("open the tiny model")
}

/// Deterministic token ids below the vocabulary size.
fn tokens(n: usize, vocab: i32, seed: u32) -> Vec<i32> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x % vocab as u32) as i32
        })
        .collect()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("peft-rust-{}-{}", name, std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn bias_option_counts() {
    // Qwen2's q/k/v biases: every one (3 layers), or those of the adapted q, v of layer 1
    let m = Model::open(data().join("tiny_qwen2")).expect("open tiny_qwen2");
    let base = LoraOptions { targets: target::Q | target::V, rank: 4, layers: Some("1".into()), ..LoraOptions::default() };
    let lora = m.count_lora(&base).unwrap();
    assert_eq!(m.count_lora(&LoraOptions { bias: Bias::All, ..base.clone() }).unwrap(), lora + 3 * (32 + 16 + 16));
    assert_eq!(m.count_lora(&LoraOptions { bias: Bias::LoraOnly, ..base }).unwrap(), lora + 32 + 16);
}

#[test]
fn info_and_counts() {
    let m = tiny();
    let i = m.info();
    assert_eq!(i.architecture, "llama");
    assert!(i.n_layers > 0 && i.vocab_size > 0 && i.n_params > 0);
    assert_eq!(i.n_trainable, 0);
    let o = LoraOptions { targets: target::Q | target::V, rank: 4, ..LoraOptions::default() };
    let n = m.count_lora(&o).unwrap();
    let kv = i.n_kv_heads as u64 * i.head_dim as u64;
    let h = i.hidden_size as u64;
    assert_eq!(n, i.n_layers as u64 * 4 * ((h + h) + (h + kv)));
}

#[test]
fn training_lowers_the_loss_and_the_adapter_reloads() {
    let mut m = tiny();
    let vocab = m.info().vocab_size;
    let n = m.attach_lora(&LoraOptions { targets: target::ALL_LINEAR, rank: 4, ..LoraOptions::default() }).unwrap();
    assert_eq!(m.info().n_trainable, n);
    m.set(Opt::Lr, 1e-2).unwrap();
    assert_eq!(m.get(Opt::Lr).unwrap(), 1e-2);
    let tok = tokens(4 * 16, vocab, 3);
    let batch = Batch::new(&tok, 4, 16).unwrap();
    let before = m.eval(&batch).unwrap();
    for _ in 0..20 {
        let r = m.step(&batch).unwrap();
        assert!(r.updated && r.loss.is_finite());
    }
    assert_eq!(m.get(Opt::Step).unwrap(), 20.0);
    let after = m.eval(&batch).unwrap();
    assert!(after.mean_loss() < before.mean_loss(), "{:?} -> {:?}", before, after);
    let dir = scratch("reload");
    m.save_adapter(&dir).unwrap();
    assert!(dir.join("adapter_model.safetensors").exists() && dir.join("adapter_config.json").exists());
    let mut again = tiny();
    again.load_adapter(&dir).unwrap();
    assert_eq!(again.eval(&batch).unwrap(), after);
    again.set_adapter_enabled(false).unwrap();
    assert_eq!(again.eval(&batch).unwrap(), before);
    // to llama.cpp's GGUF LoRA and back without the model: the same tensor file
    let gguf = dir.join("a.gguf");
    m.save_adapter_gguf(&gguf, None).unwrap();
    let back = dir.join("back");
    let co = ConvertOptions { n_heads: 4, n_kv_heads: 2, n_layers: 3, ..ConvertOptions::default() };
    convert_adapter(&gguf, &back, &co).unwrap();
    assert_eq!(std::fs::read(back.join("adapter_model.safetensors")).unwrap(),
               std::fs::read(dir.join("adapter_model.safetensors")).unwrap());
    let e = m.save_merged_gguf(dir.join("m.gguf"), GgufType::Same, None).unwrap_err();
    assert!(e.message.contains("tokenizer"), "{}", e.message); // the tiny model has no vocabulary
    assert!(!dir.join("m.gguf").exists());
    let e = convert_adapter(&gguf, dir.join("x"), &ConvertOptions::default()).unwrap_err();
    assert!(e.message.contains("head counts"), "{}", e.message);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn split_step_equals_step() {
    let (mut a, mut b) = (tiny(), tiny());
    let o = LoraOptions { init: peft::Init::Gaussian, seed: 5, ..LoraOptions::default() };
    a.attach_lora(&o).unwrap();
    b.attach_lora(&o).unwrap();
    let tok = tokens(2 * 12, a.info().vocab_size, 9);
    let batch = Batch::new(&tok, 2, 12).unwrap();
    let ra = a.step(&batch).unwrap();
    let fb = b.forward_backward(&batch).unwrap();
    assert!(!fb.updated && fb.tokens == 22);
    for g in b.grads().unwrap().iter_mut() {
        *g *= 2.0; // as if a second rank had summed the same gradients in
    }
    let rb = b.apply_update(2.0 * fb.tokens as f64).unwrap();
    assert!(rb.updated && (ra.grad_norm - rb.grad_norm).abs() < 1e-6);
    let pa = a.params().unwrap().to_vec();
    let pb = b.params().unwrap().to_vec();
    assert!(pa.iter().zip(&pb).all(|(x, y)| (x - y).abs() < 1e-7));
    assert!(b.grads().unwrap().iter().all(|&g| g == 0.0));
}

#[test]
fn other_methods_attach_and_train() {
    for which in 0..9 {
        let mut m = tiny();
        let n = match which {
            8 => m.attach_tokens(&[3, 7, 11]).unwrap(),
            7 => m
                .attach_prompt(&peft::PromptOptions {
                    n_virtual: 4,
                    init: peft::PromptInit::Text,
                    init_tokens: vec![1, 5, 9],
                    init_text: Some("x".into()),
                    ..peft::PromptOptions::default()
                })
                .unwrap(),
            4 => m
                .attach_lora(&LoraOptions {
                    targets: target::Q | target::LM_HEAD,
                    rank: 2,
                    modules_to_save: save::EMBED,
                    norms: norm::FINAL,
                    ..LoraOptions::default()
                })
                .unwrap(),
            0 => m.attach_ia3(&Ia3Options::default()).unwrap(),
            1 => m.attach_vera(&VeraOptions { rank: 16, ..VeraOptions::default() }).unwrap(),
            2 => m.attach_lora(&LoraOptions { variant: Variant::Loha, ..LoraOptions::default() }).unwrap(),
            3 => m.attach_lora(&LoraOptions { dora: true, ..LoraOptions::default() }).unwrap(),
            5 => m
                .attach_lora(&LoraOptions {
                    targets: target::V,
                    token_indices: vec![3, 7, 11],
                    head_token_indices: vec![0, 47],
                    ..LoraOptions::default()
                })
                .unwrap(),
            _ => m.attach_lora(&LoraOptions { rank: 2, init: peft::Init::Pissa, ..LoraOptions::default() }).unwrap(),
        };
        assert!(n > 0 && m.info().n_trainable == n);
        if which == 5 {
            // v (8 x 32 + 16 x 8) in 3 layers, 3 embedding rows and 2 lm_head rows of 32
            assert_eq!(n, 3 * (8 * 32 + 16 * 8) + 5 * 32);
        }
        if which == 4 {
            // q in 3 layers, lm_head A (2 x 32) + B (48 x 2), the embeddings, the final norm
            assert_eq!(n, 3 * 2 * 64 + 2 * (32 + 48) + 48 * 32 + 32);
        }
        m.set(Opt::NormLrRatio, 0.5).unwrap();
        assert_eq!(m.get(Opt::NormLrRatio).unwrap(), 0.5);
        let tok = tokens(2 * 16, m.info().vocab_size, which);
        let r = m.step(&Batch::new(&tok, 2, 16).unwrap()).unwrap();
        assert!(r.updated && r.loss.is_finite());
        if which == 7 {
            assert_eq!(n, 4 * 32);
            assert_eq!(m.info().adapter_type, "PROMPT_TUNING");
            assert_eq!(m.info().n_virtual_tokens, 4);
            let d = scratch("prompt");
            m.save_adapter(&d).unwrap();
            let cfg = std::fs::read_to_string(d.join("adapter_config.json")).unwrap();
            assert!(cfg.contains("\"peft_type\": \"PROMPT_TUNING\"") && cfg.contains("\"prompt_tuning_init\": \"TEXT\""));
        }
        if which == 6 {
            let d = scratch("pissa-converted");
            m.save_adapter_converted(&d).unwrap();
            let cfg = std::fs::read_to_string(d.join("adapter_config.json")).unwrap();
            assert!(cfg.contains("\"r\": 4") && cfg.contains("\"init_lora_weights\": true"));
        }
    }
}

#[test]
fn errors_carry_code_and_message() {
    let e = Model::open("/nonexistent/model").err().expect("opening a missing model fails");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{}", e);
    assert!(e.message.contains("/nonexistent/model"), "{}", e);
    let mut m = tiny();
    let tok = vec![0i32; 8];
    assert_eq!(Batch::new(&tok, 3, 3).unwrap_err().kind(), ErrorKind::InvalidArgument);
    let e = m.step(&Batch::new(&tok, 2, 4).unwrap()).unwrap_err(); // nothing attached
    assert_eq!(e.kind(), ErrorKind::State, "{}", e);
    let e = m.set(Opt::Lr, -1.0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("outside"), "{}", e);
    assert_eq!(m.set(Opt::Step, 3.0).unwrap_err().kind(), ErrorKind::InvalidArgument);
    let bad = LoraOptions { layers: Some("first:x".into()), ..LoraOptions::default() };
    assert_eq!(m.attach_lora(&bad).unwrap_err().kind(), ErrorKind::InvalidArgument);
    let nul = LoraOptions { layers: Some("a\0b".into()), ..LoraOptions::default() };
    assert!(m.attach_lora(&nul).unwrap_err().message.contains("NUL"));
}

#[test]
fn model_moves_to_another_thread() {
    let m = tiny();
    let handle = std::thread::spawn(move || {
        let mut m = m;
        m.attach_lora(&LoraOptions::default()).unwrap()
    });
    assert!(handle.join().unwrap() > 0);
}

#[test]
fn tokenizer_round_trip() {
    // the shared assets beside the repository ($PEFT_SHARED, or ../shared)
    let shared = std::env::var_os("PEFT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    let path = shared.join("models/stories260K");
    let t = peft::Tokenizer::open(&path).unwrap();
    let ids = t.encode("Once upon a time").unwrap();
    assert_eq!(ids.first().copied(), t.bos());
    assert_eq!(t.decode(&ids).unwrap(), "Once upon a time");
    assert!(t.vocab_size() > 0);
}

#[test]
fn several_adapters_switch_and_combine() {
    let dirs: Vec<_> = (0..2)
        .map(|k| {
            let mut m = tiny();
            m.attach_lora(&LoraOptions { rank: 2, seed: k, ..LoraOptions::default() }).unwrap();
            m.set(Opt::Lr, 1e-2).unwrap();
            let tok = tokens(2 * 16, m.info().vocab_size, k as u32);
            for _ in 0..5 {
                m.step(&Batch::new(&tok, 2, 16).unwrap()).unwrap();
            }
            let d = scratch(&format!("several-{}", k));
            m.save_adapter(&d).unwrap();
            d
        })
        .collect();
    let mut m = tiny();
    m.load_named_adapter(&dirs[0], "one").unwrap();
    m.load_named_adapter(&dirs[1], "two").unwrap();
    assert_eq!(m.adapters().unwrap(), (vec!["one".to_string(), "two".to_string()], false));
    let tok = tokens(2 * 16, m.info().vocab_size, 9);
    let b = Batch::new(&tok, 2, 16).unwrap();
    m.set_adapter(Some("one")).unwrap();
    let l1 = m.eval(&b).unwrap();
    m.combine_adapters(&["one", "two"], &[1.0, 0.0], "cat", peft::Combination::Cat, 0).unwrap();
    m.set_adapter(Some("cat")).unwrap();
    let lc = m.eval(&b).unwrap();
    assert!((lc.loss_sum - l1.loss_sum).abs() < 1e-4 * l1.loss_sum);
    // ties of "one" with itself at density 1, weights 1 and 1: the mean of two equal factors
    let o = peft::CombineOptions { how: peft::Combination::Ties, majority_by_frequency: true,
                                   ..peft::CombineOptions::default() };
    m.combine_adapters_with(&["one", "one"], &[1.0, 1.0], "ties", &o).unwrap();
    m.set_adapter(Some("ties")).unwrap();
    let lt = m.eval(&b).unwrap();
    assert!((lt.loss_sum - l1.loss_sum).abs() < 1e-4 * l1.loss_sum);
    let bad = peft::CombineOptions { density: 2.0, ..o };
    assert!(m.combine_adapters_with(&["one", "two"], &[1.0, 1.0], "x", &bad).is_err());
    m.delete_adapter("ties").unwrap();
    assert!(m.set_adapter(Some("nope")).is_err());
    m.delete_adapter("two").unwrap();
    m.set_adapter(None).unwrap();
    assert_eq!(m.adapters().unwrap().0.len(), 2);
}
