//! Fine-tune LoRA on a token file, save the adapter, reload it into a fresh model and
//! check that it evaluates the same (the Rust twin of examples/c/minimal.c).
//!     cargo run --example finetune -- MODEL_DIR TOKENS.bin OUT_DIR [steps]
use peft::{target, Batch, LoraOptions, Model, Opt};
use std::process::ExitCode;

const T: usize = 32;
const B: usize = 4;

fn run(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let (model_dir, tokens_path, out) = (&args[1], &args[2], &args[3]);
    let steps: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(50);
    let bytes = std::fs::read(tokens_path)?; // uint32 little-endian token ids
    let tok: Vec<i32> = bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i32).collect();
    let windows = tok.len() / T;
    if windows < B {
        return Err("not enough tokens".into());
    }

    let mut model = Model::open(model_dir)?;
    let n = model.attach_lora(&LoraOptions { targets: target::ALL_LINEAR, rank: 8, alpha: 16.0, ..LoraOptions::default() })?;
    model.set(Opt::Lr, 1e-2)?;
    println!("{}: {} trainable parameters (libpeft {})", model_dir, n, peft::version());

    let (mut first, mut last) = (0.0, 0.0);
    for s in 0..steps {
        let w = s * B % (windows - B + 1);
        let r = model.step(&Batch::new(&tok[w * T..(w + B) * T], B, T)?)?;
        if s == 0 {
            first = r.loss;
        }
        last = r.loss;
    }
    println!("training loss {:.4} -> {:.4}", first, last);
    model.save_adapter(out)?;

    let batch = Batch::new(&tok[..B * T], B, T)?;
    let trained = model.eval(&batch)?;
    drop(model);
    let mut reloaded = Model::open(model_dir)?;
    reloaded.load_adapter(out)?;
    let again = reloaded.eval(&batch)?;
    println!("reloaded adapter: loss {:.6} (trained handle {:.6})", again.mean_loss(), trained.mean_loss());
    if again.loss_sum != trained.loss_sum || !(last < first) {
        return Err("unexpected result".into());
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: {} MODEL_DIR TOKENS.bin OUT_DIR [steps]", args[0]);
        return ExitCode::from(2);
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("finetune: {}", e);
            ExitCode::FAILURE
        }
    }
}
